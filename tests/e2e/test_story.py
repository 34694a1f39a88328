"""The whole story of issue 2, end to end."""

from __future__ import annotations

from tests.conftest import Stack, cnaf_details


async def test_grant_then_transfer(stack: Stack) -> None:
    grant = await stack.grant([cnaf_details()])
    response = await stack.sp.fetch(
        "cnaf", "quotient_familial", grant.access_token, params={"annee": "2025", "mois": "01"}
    )
    assert response.status_code == 200, response.text
    assert set(response.json()) <= {"annee", "mois", "quotient_familial"}
    assert response.headers["transfer-id"]
    again = await stack.sp.fetch(
        "cnaf", "quotient_familial", grant.access_token, params={"annee": "2025", "mois": "01"}
    )
    assert again.status_code == 403
    assert again.json()["type"] == "urn:gateway:error:consent_exhausted"
    print(await stack.trail_types())
