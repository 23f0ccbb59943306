"""Expected failures of a command-line run and the one line that tells the user what to do about each.

`train.py` and the `leanvision` console script print `describe(err)` and exit 2 for these; anything else is a bug
and keeps its traceback.
"""

from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    StrictDataclassError,
)


def _network_errors() -> tuple[type, ...]:
    errors = []
    try:
        import requests

        errors += [requests.ConnectionError, requests.Timeout]
    except ImportError:
        pass
    try:
        import httpx

        errors += [httpx.ConnectError, httpx.TimeoutException]
    except ImportError:
        pass
    return tuple(errors)


NETWORK_ERRORS = _network_errors()
# The builtin ConnectionError covers `datasets`' "Couldn't reach ... on the Hub" and refused sockets.
HUB_ERRORS = (OfflineModeIsEnabled, LocalEntryNotFoundError, HfHubHTTPError, ConnectionError, *NETWORK_ERRORS)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def describe_hub_error(err: BaseException) -> str:
    """One line for a Hub or network failure: what failed and what to do."""
    what = _first_line(err)
    cause = err.__cause__ or err.__context__
    if type(err) is ConnectionError and isinstance(cause, HUB_ERRORS) and type(cause) is not ConnectionError:
        err = cause  # datasets wraps the Hub's error: advise on the Hub's, name the outer message
    if isinstance(err, OfflineModeIsEnabled) or (isinstance(err, ConnectionError) and _offline()):
        return (f"the Hugging Face Hub is needed but offline mode is on (HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE, "
                f"or download the files first while online, or use a local folder ({what})")
    if isinstance(err, LocalEntryNotFoundError):
        return (f"a file is neither in the local cache nor reachable on the Hub: check your connection, unset "
                f"HF_HUB_OFFLINE, or download it first while online ({what})")
    if isinstance(err, GatedRepoError):
        return (f"the repository is gated: accept its terms on the Hub, then log in with `hf auth login` or set "
                f"HF_TOKEN ({what})")
    if isinstance(err, RepositoryNotFoundError):
        return (f"repository not found or not accessible: check the name, and for a private repo log in with "
                f"`hf auth login` or set HF_TOKEN ({what})")
    if isinstance(err, HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            return (f"the Hub refused the request (HTTP {status}): log in with `hf auth login` or set HF_TOKEN to a "
                    f"token with access ({what})")
        return f"the Hub request failed: check your connection and HF_ENDPOINT, then retry ({what})"
    return (f"cannot reach the Hugging Face Hub: check your network connection (or set HF_HUB_OFFLINE=1 to use only "
            f"cached files) ({what})")


def expected_errors() -> tuple[type, ...]:
    """The exception types a command-line run reports in one line (exit 2)."""
    import yaml

    return (*HUB_ERRORS, ValueError, TypeError, StrictDataclassError, yaml.YAMLError)


def describe(err: BaseException) -> str:
    """The one line printed for an expected failure."""
    if isinstance(err, HUB_ERRORS):
        return describe_hub_error(err)
    return _first_line(err) if isinstance(err, StrictDataclassError) else str(err)
