"""Fictitious people the demo identity provider can log in as.

Every name is deliberately implausible so that a screenshot or a log line can
never be mistaken for a real person's data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Persona:
    """One fictitious person and the pivot identity the demo IdP asserts for them."""

    key: str
    given_name: str
    family_name: str
    birthdate: str  # ISO 8601 date, as in the OIDC ``birthdate`` claim
    gender: str  # "female" | "male", as in the OIDC ``gender`` claim
    birthplace: str  # INSEE commune code; empty when born abroad (the claim is then omitted)
    birthcountry: str  # INSEE country code, 99100 = France
    acr: str  # eIDAS level of assurance of this persona's login
    description_fr: str
    description_en: str

    def identity_claims(self) -> dict[str, str]:
        """The pivot identity as OIDC claims, without the empty ones."""
        claims = {
            "given_name": self.given_name,
            "family_name": self.family_name,
            "birthdate": self.birthdate,
            "gender": self.gender,
            "birthplace": self.birthplace,
            "birthcountry": self.birthcountry,
        }
        return {name: value for name, value in claims.items() if value}


PERSONAS: dict[str, Persona] = {
    persona.key: persona
    for persona in (
        Persona(
            key="marianne",
            given_name="Marianne",
            family_name="EXEMPLE-DÉMO",
            birthdate="1985-07-14",
            gender="female",
            birthplace="75056",  # Paris
            birthcountry="99100",
            acr="eidas2",
            description_fr="Née à Paris, niveau de garantie substantiel.",
            description_en="Born in Paris, substantial level of assurance.",
        ),
        Persona(
            key="jean",
            given_name="Jean",
            family_name="FICTIF-ESSAI",
            birthdate="1979-03-21",
            gender="male",
            birthplace="69123",  # Lyon
            birthcountry="99100",
            acr="eidas2",
            description_fr="Né à Lyon, niveau de garantie substantiel.",
            description_en="Born in Lyon, substantial level of assurance.",
        ),
        Persona(
            key="alix",
            given_name="Alix",
            family_name="TESTEUR-IMAGINAIRE",
            birthdate="1992-11-05",
            gender="female",
            birthplace="",  # born abroad: no INSEE commune
            birthcountry="99134",  # Spain
            acr="eidas1",
            description_fr="Née à l'étranger, niveau de garantie faible : "
            "certains fournisseurs la refuseront.",
            description_en="Born abroad, low level of assurance: "
            "some providers will turn her away.",
        ),
    )
}
