"""The benchmark scenario: one provider stub, one resource, one service provider.

Written to a temporary policies directory by ``bench/run.py``. The stub's body
(``STUB_BODY``) is what nginx (or ``stub_app.py``) returns; the resource
releases three of its fields, so minimisation has real work to do.
"""

from __future__ import annotations

import json
from pathlib import Path

PROVIDER = "stub"
RESOURCE = "record"
RESOURCE_PATH = "/v1/record"
DATA_PATH = f"/data/{PROVIDER}/{RESOURCE}"
CLIENT_ID = "bench-sp"
PURPOSE = "bench-purpose"
ACR = "eidas2"
IDENTITY = {"given_name": "Marianne", "family_name": "Exemple", "birthdate": "1980-05-04"}

# ~500 bytes of JSON, like a small administrative record.
_RECORD = {
    "annee": "2025",
    "mois": "01",
    "quotient_familial": 812,
    "allocataire": {"numero": "0123456", "regime": "general", "depuis": "2011-09-01"},
    "nombre_enfants": 2,
    "nombre_adultes": 2,
    "allocataire_unique": False,
    "prestations": [
        {"code": "AF", "montant": 141.99, "periode": "2025-01"},
        {"code": "ARS", "montant": 0, "periode": "2024-08"},
        {"code": "PAJE", "montant": 0, "periode": "2025-01"},
    ],
    "adresse": {"commune": "Démoville", "code_postal": "99999", "pays": "FR"},
    "mise_a_jour": "2025-01-31T08:00:00Z",
    "source": "bench-stub",
    "padding": "x" * 4,
}
STUB_BODY = json.dumps(_RECORD, ensure_ascii=False, separators=(",", ":"))
RELEASED = ("/annee", "/mois", "/quotient_familial")


def write_policies(directory: Path, *, stub_url: str, client_jwk: dict[str, str]) -> None:
    """Write purposes, the stub provider and the bench client (inline JWKS)."""
    (directory / "providers").mkdir(parents=True, exist_ok=True)
    (directory / "clients").mkdir(parents=True, exist_ok=True)
    (directory / "purposes.toml").write_text(
        f"""[{PURPOSE}]
label = {{ fr = "Banc d'essai", en = "Benchmark" }}
description = {{ fr = "Mesure de débit", en = "Throughput measurement" }}
legal_basis = "https://w3id.org/dpv#Consent"
dpv = "https://w3id.org/dpv#RequestedServiceProvision"
max_transfers = 1
max_validity_minutes = 60
retention_days = 0
""",
        encoding="utf-8",
    )
    fields = ",\n".join(
        f'  {{ pointer = "{p}", fr = "{p[1:]}", en = "{p[1:]}" }}' for p in RELEASED
    )
    (directory / "providers" / f"{PROVIDER}.toml").write_text(
        f"""name = "Provider stub"
base_url = "{stub_url}"
identity_claims = ["given_name", "family_name", "birthdate"]
min_acr = "eidas1"
timeout_seconds = 5.0

[resources.{RESOURCE}]
label = {{ fr = "Enregistrement", en = "Record" }}
method = "GET"
path = "{RESOURCE_PATH}"
fields = [
{fields},
]
""",
        encoding="utf-8",
    )
    jwk = ", ".join(f'{k} = "{v}"' for k, v in client_jwk.items())
    (directory / "clients" / f"{CLIENT_ID}.toml").write_text(
        f"""name = "Benchmark service provider"
role = "service_provider"
redirect_uris = ["http://127.0.0.1:9/callback"]
jwks = {{ keys = [ {{ {jwk} }} ] }}

[[grants]]
purpose = "{PURPOSE}"
provider = "{PROVIDER}"
resources = ["{RESOURCE}"]
""",
        encoding="utf-8",
    )
