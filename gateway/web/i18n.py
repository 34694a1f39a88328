"""French and English text for the person-facing pages.

Pure functions over one message catalogue: language negotiation
(RFC 9110 §12.5.4 ``Accept-Language``), translation, and date formatting.
French is the default: the gateway serves French public services first.

French strings use a no-break space (U+00A0) before ``:``, ``?`` and inside
« » so that punctuation never starts a line on a narrow screen.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final, Literal, get_args

Lang = Literal["fr", "en"]

SUPPORTED: Final[tuple[Lang, ...]] = get_args(Lang)
DEFAULT_LANG: Final[Lang] = "fr"

CONSENT_STATES: Final[tuple[str, ...]] = (
    "pending",
    "active",
    "revoked",
    "expired",
    "exhausted",
    "denied",
)
TRANSFER_OUTCOMES: Final[tuple[str, ...]] = (
    "authorized",
    "completed",
    "no_record",
    "failed",
    "denied",
)
ACR_VALUES: Final[tuple[str, ...]] = ("eidas1", "eidas2", "eidas3")
# DPV legal bases and their GDPR art. 6(1) points, by the last segment of the
# IRI (dpv#LegalObligation, eu/gdpr#A6-1-c); the narrower DPV terms contain
# these names (dpv#LegitimateInterestOfController, dpv#InformedConsent).
_LEGAL_BASES: Final[tuple[tuple[str, str, str], ...]] = (
    ("Consent", "A6-1-a", "consent"),
    ("Contract", "A6-1-b", "contract"),
    ("LegalObligation", "A6-1-c", "legal_obligation"),
    ("VitalInterest", "A6-1-d", "vital_interest"),
    ("PublicInterest", "A6-1-e", "public_task"),
    ("OfficialAuthority", "A6-1-e", "public_task"),
    ("LegitimateInterest", "A6-1-f", "legitimate_interest"),
)
# The generic explanation for an HTTP status when a route has no specific code.
_STATUS_ERRORS: Final[Mapping[int, str]] = {
    400: "bad_request",
    401: "login_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "already_decided",
    410: "request_expired",
    429: "too_many_requests",
    500: "internal",
    502: "provider_failed",
    503: "unavailable",
    504: "provider_timeout",
}

# A browser sends a handful of ranges; a header with more is not worth reading
# in full and must not cost more than a small, fixed amount of work.
_MAX_RANGES: Final = 20
_RANGE = re.compile(r"\*|[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*")
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")  # RFC 9110 §12.4.2

_NBSP = "\u00a0"

_FR: Final[dict[str, str]] = {
    # Frame of every page
    "app.name": "Passerelle de consentement",
    "app.skip": "Aller au contenu",
    "app.language": "Langue",
    "app.footer": "Vos données ne sont transmises qu’avec votre accord.",
    "lang.fr": "Français",
    "lang.en": "English",
    # Consent screen
    "consent.title": "Demande de transmission de données",
    "consent.heading": "{client} demande à recevoir des données vous concernant",
    "consent.signed_in_as": f"Connexion en tant que{_NBSP}: {{name}}",
    "consent.assurance": f"Niveau de garantie de la connexion{_NBSP}: {{level}}",
    "consent.why": "Pourquoi ces données sont demandées",
    "consent.purpose": "Objet de la demande",
    "consent.legal_basis": "Ce qui autorise cette demande",
    "consent.retention": "Durée de conservation",
    "consent.retention_zero": "Les données ne sont pas conservées après leur utilisation.",
    "consent.retention_one": "1 jour au plus après leur réception.",
    "consent.retention_many": "{days} jours au plus après leur réception.",
    "consent.data": "Données qui seront transmises",
    "consent.by_provider": "Données transmises par {provider}",
    "consent.times": "Ces données seront transmises {times}.",
    "consent.times_one": "une seule fois",
    "consent.times_many": "au plus {n} fois",
    "consent.valid_until": "Votre accord est valable jusqu’au {date}.",
    "consent.question": f"Acceptez-vous que ces données soient transmises à {{client}}{_NBSP}?",
    "consent.grant": "J’accepte de transmettre ces données",
    "consent.deny": "Je refuse",
    "consent.revoke_hint.before": (
        f"Vous pourrez retirer votre consentement à tout moment sur la page «{_NBSP}"
    ),
    "consent.revoke_hint.after": f"{_NBSP}».",
    # Levels of assurance (eIDAS)
    "acr.eidas1": "faible",
    "acr.eidas2": "substantiel",
    "acr.eidas3": "élevé",
    "acr.unknown": "non précisé",
    # Legal bases (GDPR art. 6(1)), see legal_basis_label()
    "legal_basis.consent": "Votre consentement",
    "legal_basis.contract": "Un contrat passé avec vous",
    "legal_basis.legal_obligation": "Une obligation fixée par la loi",
    "legal_basis.vital_interest": "La protection de votre vie ou de celle d’une autre personne",
    "legal_basis.public_task": "Une mission de service public",
    "legal_basis.legitimate_interest": "Un intérêt légitime de l’organisme",
    "legal_basis.unknown": "non précisé",
    # "My data"
    "me.title": "Mes données",
    "me.signed_in_as": f"Connexion en tant que{_NBSP}: {{name}}",
    "me.intro": (
        "Voici les organismes que vous avez autorisés à recevoir vos données, "
        "et ce qui leur a été transmis."
    ),
    "me.active": "Autorisations en cours",
    "me.active_empty": "Vous n’avez aucune autorisation en cours.",
    "me.past": "Autorisations terminées",
    "me.past_empty": "Vous n’avez aucune autorisation terminée.",
    "me.purpose": f"Objet{_NBSP}: {{purpose}}",
    "me.from_provider": "Données de {provider}",
    "me.transfers_used": f"Transmissions effectuées{_NBSP}: {{used}} sur {{allowed}}",
    "me.created": "Accordée le {date}",
    "me.expires": "Valable jusqu’au {date}",
    "me.status": f"Statut{_NBSP}: {{state}}",
    "me.ended": "Terminée le {date}",
    "me.history": "Transmissions",
    "me.history_empty": "Aucune transmission pour l’instant.",
    "me.transfer": f"{{date}}{_NBSP}: {{resource}} ({{provider}}), {{outcome}}",
    "me.revoke": "Retirer mon consentement",
    "me.revoke_hint": "Après le retrait, plus aucune donnée ne sera transmise à cet organisme.",
    "me.receipt": "Télécharger le reçu",
    "me.logout": "Se déconnecter",
    "me.notice.revoked": (
        "Votre consentement a été retiré. Plus aucune donnée ne sera transmise à ce titre."
    ),
    # Consent states
    "state.pending": "en attente",
    "state.active": "active",
    "state.revoked": "révoquée",
    "state.expired": "expirée",
    "state.exhausted": "utilisée",
    "state.denied": "refusée",
    # Transfer outcomes
    "transfer.authorized": "en cours",
    "transfer.completed": "transmise",
    "transfer.failed": "échec de la transmission",
    "transfer.denied": "refusée par la passerelle",
    "transfer.no_record": "l’organisme n’a aucune donnée vous concernant",
    "me.transfer_reason": f"motif{_NBSP}: {{reason}}",
    "transfer_reason.consent_revoked": "vous aviez retiré votre consentement",
    "transfer_reason.consent_exhausted": "toutes les transmissions autorisées avaient déjà eu lieu",
    "transfer_reason.consent_expired": "votre consentement avait expiré",
    "transfer_reason.resource_not_consented": "ces données ne faisaient pas partie de votre accord",
    "transfer_reason.provider_not_consented": "cet organisme ne faisait pas partie de votre accord",
    "transfer_reason.purpose_not_granted": (
        "cet organisme n’est plus autorisé à demander ces données"
    ),
    "transfer_reason.acr_insufficient": (
        "votre moyen de connexion n’était pas assez sûr pour ces données"
    ),
    "transfer_reason.query_not_allowed": "la demande contenait un paramètre non autorisé",
    "transfer_reason.provider_unavailable": "l’organisme détenteur ne répondait pas",
    "transfer_reason.provider_timeout": "l’organisme détenteur a mis trop de temps à répondre",
    "transfer_reason.provider_error": "l’organisme détenteur a rencontré une erreur",
    "transfer_reason.provider_response_not_json": (
        "l’organisme détenteur a envoyé une réponse illisible"
    ),
    "transfer_reason.provider_response_too_large": (
        "l’organisme détenteur a envoyé une réponse trop volumineuse"
    ),
    "transfer_reason.trail_unavailable": "le journal de la passerelle était indisponible",
    "transfer_reason.other": "une vérification de sécurité a échoué",
    # Error page: person_error.<code> for each code a route may show
    "error.status": "Erreur {status}",
    "error.code": f"Code à communiquer à l’assistance{_NBSP}: {{code}}",
    "error.back": "Revenir en arrière",
    "person_error.bad_request.title": "Demande incorrecte",
    "person_error.bad_request.detail": (
        "Le lien utilisé est incomplet ou n’est plus valable. "
        "Revenez sur le site qui vous a envoyé ici et recommencez."
    ),
    "person_error.bad_decision.title": "Réponse non reconnue",
    "person_error.bad_decision.detail": (
        f"Choisissez «{_NBSP}J’accepte{_NBSP}» ou «{_NBSP}Je refuse{_NBSP}» "
        "sur la page de la demande."
    ),
    "person_error.login_expired.title": "Connexion expirée",
    "person_error.login_expired.detail": (
        "La connexion a pris trop de temps ou a été interrompue. "
        "Revenez sur le site qui vous a envoyé ici et recommencez."
    ),
    "person_error.login_failed.title": "Connexion impossible",
    "person_error.login_failed.detail": (
        "La connexion n’a pas pu aboutir. Réessayez dans quelques instants."
    ),
    "person_error.login_cancelled.title": "Connexion annulée",
    "person_error.login_cancelled.detail": (
        "Vous avez annulé la connexion. Aucune donnée n’a été transmise."
    ),
    "person_error.login_required.title": "Connexion nécessaire",
    "person_error.login_required.detail": (
        "Votre session a pris fin. Connectez-vous à nouveau pour continuer."
    ),
    "person_error.forbidden.title": "Accès refusé",
    "person_error.forbidden.detail": "Vous n’avez pas accès à cette page.",
    "person_error.unknown_client.title": "Service inconnu",
    "person_error.unknown_client.detail": (
        "Le service qui vous a envoyé ici n’est pas enregistré auprès de la passerelle. "
        "Aucune donnée n’a été transmise. Revenez sur le site du service et réessayez."
    ),
    "person_error.redirect_uri.title": "Adresse de retour non autorisée",
    "person_error.redirect_uri.detail": (
        "Le service a demandé à vous renvoyer vers une adresse qu’il n’a pas déclarée. "
        "Par sécurité, la demande est arrêtée et aucune donnée n’a été transmise."
    ),
    "person_error.request_uri.title": "Demande expirée ou déjà utilisée",
    "person_error.request_uri.detail": (
        "Le lien qui vous a amené ici a déjà servi, a expiré ou ne vient pas de ce service. "
        "Aucune donnée n’a été transmise. Revenez sur le site du service et recommencez."
    ),
    "person_error.page_not_found.title": "Page introuvable",
    "person_error.page_not_found.detail": "Cette page n’existe pas ou n’est plus disponible.",
    "person_error.identity_provider_unavailable.title": "Connexion impossible pour le moment",
    "person_error.identity_provider_unavailable.detail": (
        "Le service d’identification ne répond pas. Réessayez dans quelques minutes."
    ),
    "person_error.acr_insufficient.title": "Niveau de connexion insuffisant",
    "person_error.acr_insufficient.detail": (
        "Un des organismes concernés exige un moyen d’identification plus sûr que celui que "
        "vous avez utilisé. Reconnectez-vous avec un moyen de niveau "
        f"«{_NBSP}substantiel{_NBSP}» ou «{_NBSP}élevé{_NBSP}». Aucune donnée n’a été transmise."
    ),
    "person_error.csrf.title": "Page expirée",
    "person_error.csrf.detail": (
        "Pour votre sécurité, ce formulaire n’est plus valable. "
        "Revenez en arrière, rechargez la page et recommencez."
    ),
    "person_error.other_browser.title": "Demande ouverte dans un autre navigateur",
    "person_error.other_browser.detail": (
        "Pour votre sécurité, répondez à cette demande dans le navigateur où vous l’avez commencée."
    ),
    "person_error.not_found.title": "Page introuvable",
    "person_error.not_found.detail": "Cette page n’existe pas ou n’est plus disponible.",
    "person_error.consent_unknown.title": "Demande introuvable",
    "person_error.consent_unknown.detail": "Cette demande n’existe pas ou n’est plus disponible.",
    "person_error.method_not_allowed.title": "Action impossible",
    "person_error.method_not_allowed.detail": "Cette page ne permet pas cette action.",
    "person_error.already_decided.title": "Demande déjà traitée",
    "person_error.already_decided.detail": (
        f"Vous avez déjà répondu à cette demande. Vos autorisations sont sur la page "
        f"«{_NBSP}Mes données{_NBSP}»."
    ),
    "person_error.request_expired.title": "Demande expirée",
    "person_error.request_expired.detail": (
        "Cette demande a expiré. "
        "Revenez sur le site qui vous a envoyé ici pour en faire une nouvelle."
    ),
    "person_error.too_many_requests.title": "Trop de tentatives",
    "person_error.too_many_requests.detail": "Patientez quelques minutes avant de réessayer.",
    "person_error.internal.title": "Erreur technique",
    "person_error.internal.detail": "Un problème technique est survenu. Réessayez plus tard.",
    "person_error.provider_failed.title": "Service partenaire indisponible",
    "person_error.provider_failed.detail": (
        "L’organisme qui détient vos données n’a pas pu répondre. Réessayez plus tard."
    ),
    "person_error.unavailable.title": "Service indisponible",
    "person_error.unavailable.detail": (
        "Le service est momentanément indisponible. Réessayez dans quelques minutes."
    ),
    "person_error.provider_timeout.title": "Service partenaire trop lent",
    "person_error.provider_timeout.detail": (
        "L’organisme qui détient vos données n’a pas répondu à temps. Réessayez plus tard."
    ),
    # Message page
    "message.continue": "Continuer",
    "message.back_to_me": "Retour à mes données",
    "logout.title": "Déconnexion effectuée",
    "logout.body": "Vous pouvez fermer cette page.",
    "denied.title": "Vous avez refusé",
    "denied.body": "Aucune donnée n’a été transmise.",
}

_EN: Final[dict[str, str]] = {
    "app.name": "Consent gateway",
    "app.skip": "Skip to content",
    "app.language": "Language",
    "app.footer": "Your data is only shared with your agreement.",
    "lang.fr": "Français",
    "lang.en": "English",
    "consent.title": "Request to share your data",
    "consent.heading": "{client} is asking for data about you",
    "consent.signed_in_as": "Signed in as: {name}",
    "consent.assurance": "Sign-in assurance level: {level}",
    "consent.why": "Why this data is requested",
    "consent.purpose": "Purpose",
    "consent.legal_basis": "What allows this request",
    "consent.retention": "How long they keep it",
    "consent.retention_zero": "The data is not kept after it has been used.",
    "consent.retention_one": "At most 1 day after they receive it.",
    "consent.retention_many": "At most {days} days after they receive it.",
    "consent.data": "Data that will be sent",
    "consent.by_provider": "Data sent by {provider}",
    "consent.times": "This data will be sent {times}.",
    "consent.times_one": "once",
    "consent.times_many": "at most {n} times",
    "consent.valid_until": "Your agreement is valid until {date}.",
    "consent.question": "Do you agree to this data being sent to {client}?",
    "consent.grant": "I agree to share this data",
    "consent.deny": "I refuse",
    "consent.revoke_hint.before": "You can revoke your consent at any time on the “",
    "consent.revoke_hint.after": "” page.",
    "acr.eidas1": "low",
    "acr.eidas2": "substantial",
    "acr.eidas3": "high",
    "acr.unknown": "not stated",
    "legal_basis.consent": "Your consent",
    "legal_basis.contract": "A contract with you",
    "legal_basis.legal_obligation": "An obligation set by law",
    "legal_basis.vital_interest": "Protecting your life or someone else’s",
    "legal_basis.public_task": "A public service task",
    "legal_basis.legitimate_interest": "A legitimate interest of the organisation",
    "legal_basis.unknown": "not stated",
    "me.title": "My data",
    "me.signed_in_as": "Signed in as: {name}",
    "me.intro": (
        "Here are the organisations you have allowed to receive your data, "
        "and what was sent to them."
    ),
    "me.active": "Current permissions",
    "me.active_empty": "You have no current permissions.",
    "me.past": "Past permissions",
    "me.past_empty": "You have no past permissions.",
    "me.purpose": "Purpose: {purpose}",
    "me.from_provider": "Data from {provider}",
    "me.transfers_used": "Transfers made: {used} of {allowed}",
    "me.created": "Given on {date}",
    "me.expires": "Valid until {date}",
    "me.status": "Status: {state}",
    "me.ended": "Ended on {date}",
    "me.history": "Transfers",
    "me.history_empty": "No transfers yet.",
    "me.transfer": "{date}: {resource} ({provider}), {outcome}",
    "me.revoke": "Revoke my consent",
    "me.revoke_hint": "Once revoked, no more data will be sent to this organisation.",
    "me.receipt": "Download the receipt",
    "me.logout": "Sign out",
    "me.notice.revoked": "Your consent has been revoked. No more data will be sent under it.",
    "state.pending": "pending",
    "state.active": "active",
    "state.revoked": "revoked",
    "state.expired": "expired",
    "state.exhausted": "used up",
    "state.denied": "refused",
    "transfer.authorized": "in progress",
    "transfer.completed": "sent",
    "transfer.failed": "failed",
    "transfer.denied": "refused by the gateway",
    "transfer.no_record": "the organisation has no record about you",
    "me.transfer_reason": "reason: {reason}",
    "transfer_reason.consent_revoked": "you had revoked your consent",
    "transfer_reason.consent_exhausted": "every transfer you allowed had already taken place",
    "transfer_reason.consent_expired": "your consent had expired",
    "transfer_reason.resource_not_consented": "this data was not part of your consent",
    "transfer_reason.provider_not_consented": "this organisation was not part of your consent",
    "transfer_reason.purpose_not_granted": "this organisation may no longer ask for this data",
    "transfer_reason.acr_insufficient": "your means of login was not strong enough for this data",
    "transfer_reason.query_not_allowed": "the request carried a parameter that is not allowed",
    "transfer_reason.provider_unavailable": "the organisation holding the data did not answer",
    "transfer_reason.provider_timeout": "the organisation holding the data took too long to answer",
    "transfer_reason.provider_error": "the organisation holding the data had an error",
    "transfer_reason.provider_response_not_json": (
        "the organisation holding the data sent an unreadable answer"
    ),
    "transfer_reason.provider_response_too_large": (
        "the organisation holding the data sent an answer that was too large"
    ),
    "transfer_reason.trail_unavailable": "the gateway's log was unavailable",
    "transfer_reason.other": "a security check failed",
    "error.status": "Error {status}",
    "error.code": "Code to give to support: {code}",
    "error.back": "Go back",
    "person_error.bad_request.title": "Incorrect request",
    "person_error.bad_request.detail": (
        "The link you used is incomplete or no longer valid. "
        "Go back to the website that sent you here and try again."
    ),
    "person_error.bad_decision.title": "Answer not recognised",
    "person_error.bad_decision.detail": ("Choose “I agree” or “I refuse” on the request page."),
    "person_error.login_expired.title": "Sign-in expired",
    "person_error.login_expired.detail": (
        "Signing in took too long or was interrupted. "
        "Go back to the website that sent you here and start again."
    ),
    "person_error.login_failed.title": "Sign-in failed",
    "person_error.login_failed.detail": "Signing in did not work. Please try again in a moment.",
    "person_error.login_cancelled.title": "Sign-in cancelled",
    "person_error.login_cancelled.detail": "You cancelled signing in. No data was sent.",
    "person_error.login_required.title": "Sign-in needed",
    "person_error.login_required.detail": "Your session has ended. Sign in again to continue.",
    "person_error.forbidden.title": "Access refused",
    "person_error.forbidden.detail": "You do not have access to this page.",
    "person_error.unknown_client.title": "Unknown service",
    "person_error.unknown_client.detail": (
        "The service that sent you here is not registered with the gateway. No data was "
        "shared. Go back to the service's website and try again."
    ),
    "person_error.redirect_uri.title": "Return address not allowed",
    "person_error.redirect_uri.detail": (
        "The service asked to send you back to an address it has not declared. For your "
        "safety the request was stopped and no data was shared."
    ),
    "person_error.request_uri.title": "Request expired or already used",
    "person_error.request_uri.detail": (
        "The link that brought you here was already used, has expired or does not come from "
        "this service. No data was shared. Go back to the service's website and start again."
    ),
    "person_error.page_not_found.title": "Page not found",
    "person_error.page_not_found.detail": "This page does not exist or is no longer available.",
    "person_error.identity_provider_unavailable.title": "Login is not possible right now",
    "person_error.identity_provider_unavailable.detail": (
        "The identity service is not answering. Please try again in a few minutes."
    ),
    "person_error.acr_insufficient.title": "Login level too low",
    "person_error.acr_insufficient.detail": (
        "One of the organisations involved requires a stronger means of identification than "
        "the one you used. Log in again with a 'substantial' or 'high' level means. No data "
        "was shared."
    ),
    "person_error.csrf.title": "Page expired",
    "person_error.csrf.detail": (
        "For your security, this form is no longer valid. Go back, reload the page and try again."
    ),
    "person_error.other_browser.title": "Request opened in another browser",
    "person_error.other_browser.detail": (
        "For your security, answer this request in the browser where you started it."
    ),
    "person_error.not_found.title": "Page not found",
    "person_error.not_found.detail": "This page does not exist or is no longer available.",
    "person_error.consent_unknown.title": "Request not found",
    "person_error.consent_unknown.detail": "This request does not exist or is no longer available.",
    "person_error.method_not_allowed.title": "Action not possible",
    "person_error.method_not_allowed.detail": "This page does not allow this action.",
    "person_error.already_decided.title": "Request already answered",
    "person_error.already_decided.detail": (
        "You have already answered this request. Your permissions are on the “My data” page."
    ),
    "person_error.request_expired.title": "Request expired",
    "person_error.request_expired.detail": (
        "This request has expired. Go back to the website that sent you here to make a new one."
    ),
    "person_error.too_many_requests.title": "Too many attempts",
    "person_error.too_many_requests.detail": "Please wait a few minutes before trying again.",
    "person_error.internal.title": "Technical error",
    "person_error.internal.detail": "Something went wrong on our side. Please try again later.",
    "person_error.provider_failed.title": "Partner service unavailable",
    "person_error.provider_failed.detail": (
        "The organisation holding your data could not answer. Try again later."
    ),
    "person_error.unavailable.title": "Service unavailable",
    "person_error.unavailable.detail": (
        "The service is temporarily unavailable. Try again in a few minutes."
    ),
    "person_error.provider_timeout.title": "Partner service too slow",
    "person_error.provider_timeout.detail": (
        "The organisation holding your data did not answer in time. Try again later."
    ),
    "message.continue": "Continue",
    "message.back_to_me": "Back to my data",
    "logout.title": "You are signed out",
    "logout.body": "You can close this page.",
    "denied.title": "You refused",
    "denied.body": "No data was sent.",
}

CATALOGUE: Final[Mapping[Lang, Mapping[str, str]]] = {"fr": _FR, "en": _EN}

_MONTHS: Final[Mapping[Lang, tuple[str, ...]]] = {
    "fr": (
        "janvier",
        "février",
        "mars",
        "avril",
        "mai",
        "juin",
        "juillet",
        "août",
        "septembre",
        "octobre",
        "novembre",
        "décembre",
    ),
    "en": (
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ),
}


def negotiate(accept_language: str | None) -> Lang:
    """Pick the page language from an ``Accept-Language`` header; French by default.

    Each supported language takes the highest q-value among the ranges whose
    primary subtag names it (``fr-CA`` is served French), or the q-value of
    ``*`` when none does. The highest positive q wins; ties go to the range
    listed first, then to French. ``q=0`` means "not acceptable", so
    ``fr;q=0`` yields English. Malformed ranges are skipped.
    """
    best: dict[Lang, tuple[float, int]] = {}  # lang -> (q, position of the range)
    wildcard: tuple[float, int] | None = None
    items = (accept_language or "").split(",")[:_MAX_RANGES]
    for position, item in enumerate(items):
        parsed = _parse_range(item)
        if parsed is None:
            continue
        tag, q = parsed
        if tag == "*":
            wildcard = wildcard or (q, position)
            continue
        primary = tag.split("-", 1)[0].lower()
        for lang in SUPPORTED:
            if primary == lang and (lang not in best or q > best[lang][0]):
                best[lang] = (q, position)

    scores: list[tuple[float, int, int, Lang]] = []
    for preference, lang in enumerate(SUPPORTED):
        q, position = best.get(lang) or wildcard or (-1.0, len(items))
        scores.append((q, position, preference, lang))
    q, _, _, lang = min(scores, key=lambda s: (-s[0], s[1], s[2]))
    if q > 0:
        return lang
    # Nothing acceptable was named: prefer the default unless it was refused.
    refused = {code for code, (q, _) in best.items() if q == 0}
    if wildcard is not None and wildcard[0] == 0:
        refused |= {code for code in SUPPORTED if code not in best}
    return next((code for code in SUPPORTED if code not in refused), DEFAULT_LANG)


def _parse_range(item: str) -> tuple[str, float] | None:
    """``"en-GB;q=0.8"`` -> ``("en-GB", 0.8)``; None when malformed."""
    tag, *params = (part.strip() for part in item.split(";"))
    if not _RANGE.fullmatch(tag):
        return None
    q = 1.0
    for param in params:
        name, sep, value = param.partition("=")
        if not sep or name.strip().lower() != "q":
            return None  # language ranges take no other parameter
        value = value.strip()
        if not _QVALUE.fullmatch(value):
            return None
        q = float(value)
    return tag, q


def choose(query_lang: str | None, accept_language: str | None) -> Lang:
    """An explicit ``?lang=`` wins when it names a supported language; else negotiate."""
    wanted = (query_lang or "").strip().lower()
    for lang in SUPPORTED:
        if wanted == lang:
            return lang
    return negotiate(accept_language)


def translate(lang: Lang, key: str, **params: str | int) -> str:
    """The catalogue text for ``key`` with ``{name}`` placeholders filled.

    Raises KeyError for an unknown key or a missing parameter, so that a typo
    fails the page tests instead of showing a key to a person.
    """
    return CATALOGUE[lang][key].format_map(params)


def state_label(lang: Lang, state: str) -> str:
    """Plain-words label of a consent state (``revoked`` -> ``révoquée``)."""
    if state not in CONSENT_STATES:
        raise KeyError(state)
    return translate(lang, f"state.{state}")


def outcome_label(lang: Lang, outcome: str) -> str:
    """Plain-words outcome of a transfer (``completed`` -> ``transmise``)."""
    if outcome not in TRANSFER_OUTCOMES:
        raise KeyError(outcome)
    return translate(lang, f"transfer.{outcome}")


TRANSFER_REASONS: Final[frozenset[str]] = frozenset(
    {
        "consent_revoked",
        "consent_exhausted",
        "consent_expired",
        "resource_not_consented",
        "provider_not_consented",
        "purpose_not_granted",
        "acr_insufficient",
        "query_not_allowed",
        "provider_unavailable",
        "provider_timeout",
        "provider_error",
        "provider_response_not_json",
        "provider_response_too_large",
        "trail_unavailable",
    }
)


def reason_label(lang: Lang, code: str) -> str:
    """Why a transfer was refused or failed, in plain words (technical codes grouped)."""
    return translate(lang, f"transfer_reason.{code if code in TRANSFER_REASONS else 'other'}")


def acr_label(lang: Lang, acr: str | None) -> str:
    """Plain-words eIDAS level of assurance for an OIDC ``acr`` value."""
    return translate(lang, f"acr.{acr}" if acr in ACR_VALUES else "acr.unknown")


def legal_basis_label(lang: Lang, iri: str) -> str:
    """Plain words for a DPV legal basis IRI; "not stated" when it is not recognised."""
    term = re.split(r"[#/:]", iri)[-1]
    for dpv_name, gdpr_point, key in _LEGAL_BASES:
        if dpv_name in term or term == gdpr_point:
            return translate(lang, f"legal_basis.{key}")
    return translate(lang, "legal_basis.unknown")


def error_text(lang: Lang, code: str, status: int) -> tuple[str, str]:
    """Title and detail of an error page: those of ``code`` when the catalogue
    explains it, else the generic ones for ``status``."""
    if f"person_error.{code}.title" not in CATALOGUE[lang]:
        code = _STATUS_ERRORS.get(status, "internal" if status >= 500 else "bad_request")
    return (
        translate(lang, f"person_error.{code}.title"),
        translate(lang, f"person_error.{code}.detail"),
    )


def format_datetime(dt: datetime, lang: Lang) -> str:
    """``29 novembre 2026 à 14 h 05 (UTC)`` / ``29 November 2026 at 14:05 (UTC)``.

    Naive datetimes are taken as UTC, which is how the gateway stores them.
    """
    utc = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    month = _MONTHS[lang][utc.month - 1]
    if lang == "fr":
        day = "1er" if utc.day == 1 else str(utc.day)  # French writes the first ordinal
        return f"{day} {month} {utc.year} à {utc.hour} h {utc.minute:02d} (UTC)"
    return f"{utc.day} {month} {utc.year} at {utc.hour:02d}:{utc.minute:02d} (UTC)"
