"""Aculab behaviour that the public documentation does not state.

Every assumption in docs/aculab.md lives here, once, and both the
client and the simulator read it from here. When a real account shows one of
these to be wrong, this is the one file to edit (and docs/aculab.md's list of
assumptions beside it).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

from campaign import vocabulary
from campaign.vocabulary import CallCause

# §2: the strings service_start returns are the application_instance_ids that
# application_status accepts and that the final page reports.
REFERENCES_ARE_INSTANCE_IDS = True

# §2: a JSON list sent by a Trial account is refused whole with HTTP 400 / 0002.
TRIAL_LIST_STATUS = 400
TRIAL_LIST_CODE = "0002"
TRIAL_LIST_TEXT = "rest_calls: a list of calls is only allowed for Production and Premium accounts"

# §2: the same unique_id with different parameters is refused with HTTP 400 / 0002.
UNIQUE_ID_CONFLICT_STATUS = 400
UNIQUE_ID_CONFLICT_CODE = "0002"
UNIQUE_ID_CONFLICT_TEXT = "unique_id: already used with different parameters"

# §2: Aculab remembers a unique_id for at least this long. The engine never
# relies on more than its own idempotency window, which defaults far shorter.
UNIQUE_ID_RETENTION_SECONDS = 24 * 3600
DEFAULT_IDEMPOTENCY_WINDOW_SECONDS = 3600

# §2: the maximum list length is not published. The simulator refuses longer
# lists with 400 / 0002; the engine's batch size defaults below it.
DEFAULT_MAX_LIST_LENGTH = 100
LIST_TOO_LONG_CODE = "0002"
DEFAULT_BATCH_SIZE = 50

# §2: one invalid call object rejects the whole request (HTTP 400, no call
# started) and `details` names the offending list index. Our assumed shape of a
# details entry is a string "rest_calls[<index>]: <reason>".
INVALID_OBJECT_STATUS = 400
INVALID_OBJECT_REJECTS_WHOLE_REQUEST = True


def object_detail(index: int, reason: str) -> str:
    """A `details` entry naming the list index of a bad call object."""
    return f"rest_calls[{index}]: {reason}"


def detail_index(detail: Any) -> int | None:
    """The list index a `details` entry names, if it follows the assumed shape."""
    if not isinstance(detail, str) or not detail.startswith("rest_calls["):
        return None
    end = detail.find("]")
    digits = detail[len("rest_calls[") : end]
    return int(digits) if end > 0 and digits.isdigit() else None


# §2 queue endpoint: GET .../outbound/<name>/queue answers {"service_name", "length"}.
QUEUE_BODY_KEYS = ("service_name", "length")

# §2 purge: a start removed from the queue by DELETE never runs. Seen through
# application_status it is finished (start_time stays null, stop_time set) with
# this entry in `errs`.
PURGED_ERROR_CODE = "purged"
PURGED_ERROR_TEXT = "removed from the outbound queue before it started"

# §3: unknown instance id → HTTP 404 with the error JSON.
UNKNOWN_INSTANCE_STATUS = 404

# §3: results are kept at least this long.
STATUS_RETENTION_SECONDS = 7 * 24 * 3600

InstancePhase = Literal["queued", "running", "finished"]


def instance_phase(body: dict[str, Any]) -> InstancePhase:
    """§3: the lifecycle of an instance as application_status shows it.

    queued: adr.start_time is null; running: start_time set and stop_time null;
    finished: stop_time set (a purged start is finished with start_time null).
    """
    adr = body.get("adr") or {}
    if adr.get("stop_time") is not None:
        return "finished"
    if adr.get("start_time") is None:
        return "queued"
    return "running"


# §5: the final page's response body is ignored; we answer with no actions.
FINAL_PAGE_RESPONSE: dict[str, Any] = {"actions": []}

# §5: Aculab does not sign final-page requests; the receiver protects itself
# with a secret path segment and by ignoring ids it did not start.
FINAL_PAGE_IS_SIGNED = False


# ---------------------------------------------------------------------------
# Added with the simulator (campaign/simulator/). Each is a choice made where
# the documentation is silent; the client and the simulator both read them here.
# ---------------------------------------------------------------------------

# §2: a bad call object makes the rest_calls parameter malformed, so the code is
# 0002 (the status is INVALID_OBJECT_STATUS above).
INVALID_OBJECT_CODE = "0002"

# §2: the keys a call object may carry. Any other key rejects the whole request
# with 0002 instead of being ignored, so a misspelt field ("form", "tokens")
# fails loudly rather than silently dialling without it.
CALL_OBJECT_KEYS = frozenset({"to", "from", "token", "outbound_parameters", "extra_sip_headers"})
UNKNOWN_CALL_OBJECT_KEYS_REJECTED = True

# §2: each extra_sip_headers entry is an object with exactly a string `name` (an
# RFC 3261 token) and a string `value` on one line.
EXTRA_SIP_HEADER_KEYS = frozenset({"name", "value"})

# §4: a destination that is neither prefixed nor a telephone number is a SIP
# address and must look like user@host. So "+441908273800" without `tel:` is
# refused (a leading '+' is only allowed after `tel:`), never dialled as SIP.
SIP_ADDRESS_NEEDS_USER_AT_HOST = True

# §2: only a request that started calls remembers its unique_id. A request that
# was refused (authentication, validation, throttling, an error before anything
# started) does not, so resending it with the same unique_id starts the calls.
REJECTED_REQUEST_REMEMBERS_UNIQUE_ID = False

# §2: unique_ids form one namespace per account: the same id sent to another
# outbound service is "different parameters" (a conflict), not a replay. A replay
# must carry a byte-identical rest_calls value (via either parameter name).
UNIQUE_ID_SCOPE: Literal["account"] = "account"

# §2: an empty unique_id is malformed (0002) rather than treated as absent.
EMPTY_UNIQUE_ID_CODE = "0002"


# Errors without a four-digit code carry "HTTP <status>" (the doc shows "HTTP 4xx";
# we use the same form for 5xx).
def http_error_code(status: int) -> str:
    return f"HTTP {status}"


# HTTP 429 means the request was refused before anything started. (The engine
# re-sends with the same unique_id anyway, which is safe either way.)
THROTTLED_STATUS = 429
THROTTLED_STARTS_NOTHING = True

# §2 purge: DELETE .../outbound/<name>/queue answers 200 with
# {"service_name": "...", "purged": N}, N being the starts removed.
PURGE_BODY_KEYS = ("service_name", "purged")

# §2/§5: a purged start never placed a call, so Aculab does not request its final
# page; the engine learns of it from the DELETE answer or application_status.
PURGED_START_REQUESTS_FINAL_PAGE = False

# §3: times are Unix seconds as JSON numbers that may carry a fraction.
# §3: `cdrs` is empty until the instance has finished.

# §5: the final page is requested with the instance_info JSON as the POST body
# (Content-Type application/json), not as a form field.
FINAL_PAGE_CONTENT_TYPE = "application/json"

# §5: by the time the final page runs the call has ended, so this_call.call_state
# is "idle" whatever the cause.
FINAL_PAGE_CALL_STATE = "idle"

# §5: causes meaning the far end answered (the others never connected). The
# causes themselves are defined in campaign/vocabulary.py (AnsweredCause).
ANSWERED_CAUSES: frozenset[CallCause] = frozenset(vocabulary.ANSWERED_CAUSES)

# §5: the call_raw_cause the simulator reports for each call_cause. Only "486"
# (busy) and "-1" are documented; the rest are plausible SIP codes. The engine
# must act on call_cause and only record call_raw_cause.
SIMULATED_RAW_CAUSES: Mapping[str, str] = MappingProxyType(
    {
        "completed": "200",
        "hung_up": "200",
        "no_answer": "480",
        "busy": "486",
        "unobtainable": "404",
        "failed": "503",
        "dropped": "-1",
    }
)

# §1: "some older endpoints answer errors in HTML/XML" without Accept:
# application/json. Which ones is not said, so the simulator treats every
# endpoint as one of them: an error goes back as JSON only when the request's
# Accept header names application/json (a bare */* is not enough).
ERRORS_ARE_JSON_ONLY_WITH_ACCEPT_JSON = True
