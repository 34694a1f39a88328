"""The policy loader: the shipped set loads, and every kind of mistake is refused."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from gateway.policy import PolicyError, PolicySet, describe, load_policies

SHIPPED = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A writable copy of the shipped policy set."""
    target = tmp_path / "policies"
    shutil.copytree(SHIPPED, target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def load(directory: Path, *, allow_http: bool = True) -> PolicySet:
    return load_policies(directory, allow_http=allow_http)


# --- the shipped set ---------------------------------------------------------------------


def test_shipped_policies_load_in_demo_mode() -> None:
    policy = load(SHIPPED)

    assert set(policy.purposes) == {"family-benefit-eligibility", "school-canteen-pricing"}
    assert set(policy.providers) == {"dgfip", "cnaf"}
    assert set(policy.clients) == {"mairie-demoville", "ccas-exempleville", "auditeur-demo"}
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", policy.digest)

    purpose = policy.purposes["family-benefit-eligibility"]
    assert purpose.max_transfers == 3
    assert purpose.max_validity_seconds == 3600
    assert purpose.retention_days == 30
    assert purpose.legal_basis == "https://w3id.org/dpv#Consent"

    dgfip = policy.providers["dgfip"]
    assert dgfip.base_url == "http://127.0.0.1:8091"
    assert dgfip.min_acr == "eidas1"
    assert dgfip.timeout_seconds == 5.0
    assert dgfip.max_response_bytes == 65536
    revenu = dgfip.resources["revenu_fiscal"]
    assert revenu.provider == "dgfip"
    assert revenu.path == "/impots/v1/revenu-fiscal"
    assert revenu.pointers == (
        "/annee",
        "/revenu_fiscal_reference",
        "/nombre_parts",
        "/situation_familiale",
    )
    assert revenu.fields[2].label.in_("fr") == "Nombre de parts"
    assert revenu.query["annee"].fullmatch("2024")
    assert not revenu.query["annee"].fullmatch("2024; DROP")
    assert policy.providers["cnaf"].min_acr == "eidas2"
    assert set(policy.providers["cnaf"].resources) == {
        "quotient_familial",
        "composition_familiale",
    }
    assert policy.resource("cnaf", "composition_familiale") is not None
    assert policy.resource("cnaf", "nope") is None

    mairie = policy.clients["mairie-demoville"]
    assert mairie.role == "service_provider"
    assert mairie.jwks_uri == "http://127.0.0.1:8090/jwks.json"
    assert mairie.jwks is None
    assert {(g.purpose, g.provider, g.resources) for g in mairie.grants} == {
        ("family-benefit-eligibility", "cnaf", frozenset({"quotient_familial"})),
        ("family-benefit-eligibility", "dgfip", frozenset({"revenu_fiscal"})),
    }
    ccas = policy.clients["ccas-exempleville"]
    assert ccas.jwks is not None and ccas.jwks["keys"][0]["crv"] == "P-256"
    assert "d" not in ccas.jwks["keys"][0]
    auditor = policy.clients["auditeur-demo"]
    assert (auditor.role, auditor.grants, auditor.redirect_uris) == ("auditor", (), ())


def test_shipped_policies_need_demo_mode_for_http() -> None:
    with pytest.raises(PolicyError, match="base_url: must use https"):
        load(SHIPPED, allow_http=False)


def test_error_names_file_and_key(policies: Path) -> None:
    edit(policies / "providers/dgfip.toml", '"/nombre_parts"', '"nombre_parts"')
    with pytest.raises(PolicyError) as caught:
        load(policies)
    assert str(caught.value) == (
        f"{policies}/providers/dgfip.toml: "
        'resources.revenu_fiscal.fields[2].pointer: must start with "/"'
    )
    assert caught.value.key == "resources.revenu_fiscal.fields[2].pointer"
    assert caught.value.file == f"{policies}/providers/dgfip.toml"


# --- every mistake is an error -----------------------------------------------------------

DGFIP = "providers/dgfip.toml"
CNAF = "providers/cnaf.toml"
MAIRIE = "clients/mairie-demoville.toml"
CCAS = "clients/ccas-exempleville.toml"
AUDITOR = "clients/auditeur-demo.toml"
PURPOSES = "purposes.toml"

CASES = [
    # unknown keys, at every level
    ("unknown-top", DGFIP, "min_acr =", 'colour = "blue"\nmin_acr =', "colour", "unknown key"),
    (
        "unknown-resource",
        DGFIP,
        'method = "GET"',
        'method = "GET"\nverb = "GET"',
        "resources.revenu_fiscal.verb",
        "unknown key",
    ),
    (
        "unknown-field",
        DGFIP,
        '{ pointer = "/annee",',
        '{ secret = true, pointer = "/annee",',
        "resources.revenu_fiscal.fields[0].secret",
        "unknown key",
    ),
    (
        "unknown-label-lang",
        DGFIP,
        'label = { fr = "Revenu fiscal de référence", en',
        'label = { de = "x", fr = "Revenu fiscal de référence", en',
        "resources.revenu_fiscal.label.de",
        "unknown key",
    ),
    (
        "unknown-purpose-key",
        PURPOSES,
        "retention_days = 30",
        "retention_days = 30\nretention_years = 1",
        "family-benefit-eligibility.retention_years",
        "unknown key",
    ),
    (
        "unknown-grant-key",
        MAIRIE,
        'provider = "cnaf"',
        'provider = "cnaf"\nwhy = "because"',
        "grants[0].why",
        "unknown key",
    ),
    # missing keys and wrong types
    ("missing", DGFIP, 'min_acr = "eidas1"\n', "", "min_acr", "missing required key"),
    (
        "missing-label-lang",
        DGFIP,
        ', en = "Reference tax income" }\nmethod',
        " }\nmethod",
        "resources.revenu_fiscal.label.en",
        "missing required key",
    ),
    (
        "missing-jwks",
        MAIRIE,
        'jwks_uri = "http://127.0.0.1:8090/jwks.json"\n',
        "",
        "jwks",
        "exactly one",
    ),
    (
        "type-int",
        PURPOSES,
        "max_transfers = 3",
        'max_transfers = "3"',
        "eligibility.max_transfers",
        "must be an integer",
    ),
    (
        "type-bool",
        PURPOSES,
        "max_transfers = 3",
        "max_transfers = true",
        "eligibility.max_transfers",
        "must be an integer",
    ),
    ("type-str", DGFIP, 'name = "Direction', "name = 3 # ", "name", "non-empty string"),
    (
        "type-list",
        DGFIP,
        "identity_claims = [",
        'identity_claims = "given_name" # [',
        "identity_claims",
        "array",
    ),
    (
        "timeout-zero",
        DGFIP,
        "timeout_seconds = 5.0",
        "timeout_seconds = 0",
        "timeout_seconds",
        "> 0",
    ),
    ("size-huge", DGFIP, "= 65536", "= 1_000_000_000", "max_response_bytes", "between"),
    (
        "zero-transfers",
        PURPOSES,
        "max_transfers = 3",
        "max_transfers = 0",
        "eligibility.max_transfers",
        ">= 1",
    ),
    # dangling references
    ("dangling-purpose", MAIRIE, '"family-benefit-eligibility"', '"housing"', "purpose", "unknown"),
    (
        "dangling-provider",
        MAIRIE,
        'provider = "cnaf"',
        'provider = "urssaf"',
        "provider",
        "unknown",
    ),
    (
        "dangling-resource",
        MAIRIE,
        '["quotient_familial"]',
        '["quotient_familial", "patrimoine"]',
        "grants[0].resources[1]",
        "unknown resource cnaf/patrimoine",
    ),
    (
        "duplicate-grant",
        MAIRIE,
        'provider = "dgfip"',
        'provider = "cnaf"',
        "grants[1]",
        "already declared",
    ),
    (
        "duplicate-resource",
        MAIRIE,
        '["revenu_fiscal"]',
        '["revenu_fiscal", "revenu_fiscal"]',
        "grants[1].resources[1]",
        "duplicate value",
    ),
    ("empty-grant", MAIRIE, '["revenu_fiscal"]', "[]", "grants[1].resources", "must not be empty"),
    # URLs
    (
        "http-remote",
        DGFIP,
        "http://127.0.0.1:8091",
        "http://dgfip.example",
        "base_url",
        "127.0.0.1",
    ),
    ("base-query", DGFIP, ':8091"', ':8091/?x=1"', "base_url", "query"),
    ("base-fragment", DGFIP, ':8091"', ':8091/#x"', "base_url", "fragment"),
    ("base-creds", DGFIP, "http://127.0.0.1", "http://u:p@127.0.0.1", "base_url", "credentials"),
    ("base-scheme", DGFIP, "http://127.0.0.1:8091", "ftp://127.0.0.1", "base_url", "https"),
    ("base-port", DGFIP, ":8091", ":99999", "base_url", "not a valid URL"),
    (
        "jwks-uri-remote",
        MAIRIE,
        "http://127.0.0.1:8090/jwks",
        "http://sp.example/jwks",
        "jwks_uri",
        "127.0.0.1",
    ),
    (
        "redirect-fragment",
        MAIRIE,
        "8090/callback",
        "8090/callback#top",
        "redirect_uris[0]",
        "fragment",
    ),
    ("redirect-remote", CCAS, "https://ccas", "http://ccas", "redirect_uris[0]", "127.0.0.1"),
    # paths and pointers
    ("path-relative", DGFIP, 'path = "/impots', 'path = "impots', "path", 'start with "/"'),
    ("path-dotdot", DGFIP, "/v1/revenu", "/v1/../revenu", "path", '".."'),
    ("path-query", DGFIP, 'revenu-fiscal"', 'revenu-fiscal?x=1"', "path", '"?"'),
    ("path-encoded", DGFIP, "/v1/revenu", "/v1/%2e%2e/revenu", "path", "may only contain"),
    ("path-double-slash", DGFIP, 'path = "/impots', 'path = "//evil.example/impots', "path", "//"),
    ("pointer-tilde", DGFIP, '"/annee"', '"/an~2nee"', "fields[0].pointer", '"~"'),
    ("pointer-empty", DGFIP, '"/annee"', '""', "fields[0].pointer", 'start with "/"'),
    ("pointer-duplicate", DGFIP, '"/nombre_parts"', '"/annee"', "fields[2].pointer", "duplicate"),
    # enumerations
    ("acr", DGFIP, '"eidas1"', '"substantial"', "min_acr", "eidas1, eidas2, eidas3"),
    ("claim", DGFIP, '"birthcountry"]', '"nir"]', "identity_claims[5]", "unknown claim"),
    ("role", MAIRIE, '"service_provider"', '"admin"', "role", "must be one of"),
    ("method", DGFIP, 'method = "GET"', 'method = "POST"', "method", "GET"),
    # roles
    (
        "auditor-grants",
        AUDITOR,
        "] }\n",
        '] }\n[[grants]]\npurpose = "school-canteen-pricing"\nprovider = "cnaf"\n'
        'resources = ["quotient_familial"]\n',
        "grants",
        "auditor",
    ),
    (
        "auditor-redirect",
        AUDITOR,
        'role = "auditor"',
        'role = "auditor"\nredirect_uris = ["https://a.example/cb"]',
        "redirect_uris",
        "auditor",
    ),
    (
        "sp-no-redirect",
        MAIRIE,
        'redirect_uris = ["http://127.0.0.1:8090/callback"]\n',
        "",
        "redirect_uris",
        "at least one",
    ),
    # patterns, ids, keys
    ("pattern", DGFIP, '"20[0-9]{2}"', '"20[0-9"', "query.annee", "invalid regular expression"),
    (
        "resource-id",
        DGFIP,
        "[resources.revenu_fiscal]",
        "[resources.Revenu]",
        "resources.Revenu",
        "must match",
    ),
    (
        "purpose-id",
        PURPOSES,
        "[school-canteen-pricing]",
        "[School_Canteen]",
        "School_Canteen",
        "must match",
    ),
    (
        "jwks-private",
        CCAS,
        'kty = "EC",',
        'kty = "EC", d = "c2VjcmV0",',
        "jwks.keys[0]",
        "public key",
    ),
    ("jwks-oct", CCAS, 'kty = "EC",', 'kty = "oct",', "jwks.keys[0].kty", "must be one of"),
    ("jwks-garbage", CCAS, 'x = "_Y1S', 'x = "AAAA', "jwks.keys[0]", "not a usable public key"),
    (
        "jwks-both",
        CCAS,
        "jwks = {",
        'jwks_uri = "https://ccas.example/jwks"\njwks = {',
        "jwks",
        "exactly one",
    ),
]


@pytest.mark.parametrize(
    ("file", "old", "new", "key", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_invalid_policies_are_refused(
    policies: Path, file: str, old: str, new: str, key: str, message: str
) -> None:
    edit(policies / file, old, new)
    with pytest.raises(PolicyError) as caught:
        load(policies)
    error = caught.value
    assert error.file == str(policies / file)
    assert key in error.key
    assert message in error.message


def test_resource_needs_fields_and_provider_needs_resources(policies: Path) -> None:
    provider = policies / "providers/urssaf.toml"
    head = 'name = "U"\nbase_url = "https://u.example"\nidentity_claims = []\nmin_acr = "eidas1"\n'
    provider.write_text(
        head + '[resources.r]\nlabel = { fr = "R", en = "R" }\nmethod = "GET"\n'
        'path = "/r"\nfields = []\n',
        encoding="utf-8",
    )
    with pytest.raises(PolicyError, match=r"resources\.r\.fields: must be a non-empty array"):
        load(policies)
    provider.write_text(head + "resources = {}\n", encoding="utf-8")
    with pytest.raises(PolicyError, match="resources: a provider needs at least one resource"):
        load(policies)


def test_https_jwks_uri_and_redirects_are_required_outside_demo(policies: Path) -> None:
    for name in ("dgfip", "cnaf"):
        edit(policies / f"providers/{name}.toml", "http://127.0.0.1", "https://127.0.0.1")
    with pytest.raises(PolicyError) as caught:
        load(policies, allow_http=False)
    assert caught.value.file.endswith("mairie-demoville.toml")
    assert caught.value.key == "redirect_uris[0]"


@pytest.mark.parametrize("host", ["localhost", "[::1]"])
def test_loopback_http_names_are_accepted_in_demo_mode(policies: Path, host: str) -> None:
    edit(policies / DGFIP, "127.0.0.1", host)
    assert load(policies).providers["dgfip"].base_url == f"http://{host}:8091"


def test_trailing_slash_of_base_url_is_dropped(policies: Path) -> None:
    edit(policies / DGFIP, ':8091"', ':8091/"')
    assert load(policies).providers["dgfip"].base_url == "http://127.0.0.1:8091"


def test_toml_syntax_error_names_file_and_line(policies: Path) -> None:
    edit(policies / CNAF, "min_acr =", "min_acr = = ")
    with pytest.raises(PolicyError, match=r"cnaf\.toml: invalid TOML: .*line 5"):
        load(policies)


def test_file_name_must_be_an_id(policies: Path) -> None:
    (policies / "clients/mairie-demoville.toml").rename(policies / "clients/Mairie.toml")
    with pytest.raises(PolicyError, match=r"Mairie\.toml: file name must match"):
        load(policies)


def test_stray_files_are_refused(policies: Path) -> None:
    (policies / "providers/urssaf.yaml").write_text("name: x\n", encoding="utf-8")
    with pytest.raises(PolicyError, match=r"urssaf\.yaml: unexpected file"):
        load(policies)


def test_hidden_files_are_ignored(policies: Path) -> None:
    (policies / "clients/.gitkeep").write_text("", encoding="utf-8")
    assert load(policies).digest == load(SHIPPED).digest


def test_missing_purposes_file(policies: Path) -> None:
    (policies / PURPOSES).unlink()
    with pytest.raises(PolicyError, match=r"purposes\.toml: cannot be read"):
        load(policies)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="policy directory not found"):
        load(tmp_path / "nowhere")


def test_empty_policy_set_loads_and_grants_nothing(tmp_path: Path) -> None:
    (tmp_path / PURPOSES).write_text("", encoding="utf-8")
    policy = load(tmp_path)
    assert (policy.providers, policy.purposes, policy.clients) == ({}, {}, {})


# --- digest ------------------------------------------------------------------------------


def test_digest_is_stable_for_equal_content(policies: Path) -> None:
    assert load(SHIPPED).digest == load(policies).digest == load(policies).digest


def test_digest_ignores_comments_layout_and_key_order(policies: Path) -> None:
    before = load(policies).digest
    edit(policies / DGFIP, 'min_acr = "eidas1"\n', "")
    edit(policies / DGFIP, "name = ", '# a comment\nmin_acr   =   "eidas1"\nname = ')
    edit(policies / PURPOSES, "max_transfers = 3\n", "")
    edit(policies / PURPOSES, "retention_days = 30", "retention_days = 30\nmax_transfers = 3")
    assert load(policies).digest == before


@pytest.mark.parametrize(
    ("file", "old", "new"),
    [
        (DGFIP, '"20[0-9]{2}"', '"20[0-9]{2}|19[0-9]{2}"'),
        (DGFIP, "timeout_seconds = 5.0", "timeout_seconds = 4.0"),
        (DGFIP, '"Nombre de parts"', '"Nombre de parts fiscales"'),
        (PURPOSES, "max_transfers = 3", "max_transfers = 2"),
        (MAIRIE, '["quotient_familial"]', '["quotient_familial", "composition_familiale"]'),
        (CCAS, "ccas-exempleville-demo-1", "ccas-exempleville-demo-2"),
    ],
)
def test_digest_changes_with_meaning(policies: Path, file: str, old: str, new: str) -> None:
    before = load(policies).digest
    edit(policies / file, old, new)
    assert load(policies).digest != before


# --- describe ----------------------------------------------------------------------------


def test_describe_lists_who_receives_what() -> None:
    policy = load(SHIPPED)
    report = describe(policy)
    assert policy.digest in report
    assert "Mairie de Démoville (démonstration) [service_provider]" in report
    assert '"Eligibility for municipal family benefits" (family-benefit-eligibility)' in report
    assert "legal basis: https://w3id.org/dpv#Consent" in report
    assert "at most 3 transfer(s) per consent, consent valid up to 60 min" in report
    assert "from Caisse nationale des allocations familiales (démonstration)" in report
    assert "/nombre_parts  Number of tax shares" in report
    assert "receives no personal data" in report
    # The mairie's block names only what it is granted.
    mairie = report.split("mairie-demoville:")[1]
    assert "composition_familiale" not in mairie


def test_describe_in_french() -> None:
    report = describe(load(SHIPPED), "fr")
    assert "« Calcul du tarif de la restauration scolaire »" in report
    assert "/allocataire_unique  Parent isolé" in report
    assert "ne reçoit aucune donnée personnelle" in report
