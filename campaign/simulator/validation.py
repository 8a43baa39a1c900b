"""Request validation (§2, §4): the parameters of a request and the call objects
of rest_calls, each problem reported the way Aculab reports it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web
from multidict import MultiDict

from campaign import assumptions
from campaign.simulator.calls import CallSpec
from campaign.simulator.config import SimulatorConfig
from campaign.simulator.destinations import NumberChecks, classify_destination, sip_header_problems
from campaign.simulator.refusals import Refused, bad_request

# [doc] §2.
TOKEN_MAX_CHARS: Final = 5000


async def request_params(request: web.Request) -> MultiDict[str]:
    """Query-string and form parameters together, repeats kept."""
    params: MultiDict[str] = MultiDict(request.query)
    if request.method == "POST" and request.body_exists:
        try:
            form = await request.post()
        except (ValueError, LookupError):  # LookupError: an unknown charset
            raise bad_request("0002", "request body: not a valid form") from None
        for key, value in form.items():
            if not isinstance(value, str):
                raise bad_request("0002", f"{key}: must be a plain form field")
            params.add(key, value)
    return params


def single(params: MultiDict[str], name: str) -> str | None:
    values = params.getall(name, [])
    if len(values) > 1:
        raise bad_request("0003", f"{name}: given more than once")
    return values[0] if values else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class RestCalls:
    """Parses rest_calls into call specs, or refuses the whole request."""

    def __init__(self, config: SimulatorConfig, numbers: NumberChecks) -> None:
        self._config = config
        self._numbers = numbers

    def parse(self, rest_calls: str, counted: Callable[[int], None]) -> list[CallSpec]:
        """The call specs of rest_calls, or Refused. `counted` hears how many call
        objects it holds as soon as that is known, even if it is then refused."""
        try:
            value = json.loads(rest_calls, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise bad_request("0002", "rest_calls: not valid JSON") from None
        if isinstance(value, dict | list):
            counted(len(value) if isinstance(value, list) else 1)
        return self._specs(value)

    def _specs(self, value: Any) -> list[CallSpec]:
        config = self._config
        if isinstance(value, dict):
            objects: list[Any] = [value]
        elif isinstance(value, list):
            if not value:
                raise bad_request("0002", "rest_calls: empty list")
            if config.account_type == "trial":
                raise Refused(
                    assumptions.TRIAL_LIST_STATUS,
                    assumptions.TRIAL_LIST_CODE,
                    assumptions.TRIAL_LIST_TEXT,
                    outcome="invalid",
                )
            if len(value) > config.max_list_length:
                raise bad_request(
                    assumptions.LIST_TOO_LONG_CODE,
                    f"rest_calls: more than {config.max_list_length} calls in one request",
                )
            objects = value
        else:
            raise bad_request("0002", "rest_calls: must be a JSON object or a list of objects")

        specs: list[CallSpec] = []
        details: list[str] = []
        for index, item in enumerate(objects):
            problems = self._call_problems(item)
            if problems:
                details.extend(assumptions.object_detail(index, p) for p in problems)
            else:
                specs.append(
                    CallSpec(
                        to=item["to"],
                        from_=item.get("from"),
                        token=item.get("token"),
                        outbound_parameters=item.get("outbound_parameters"),
                        extra_sip_headers=tuple(
                            (h["name"], h["value"]) for h in item.get("extra_sip_headers", [])
                        ),
                    )
                )
        if details:
            raise bad_request(
                assumptions.INVALID_OBJECT_CODE,
                "rest_calls: invalid call object; nothing was started",
                details,
            )
        return specs

    def _call_problems(self, item: Any) -> list[str]:
        if not isinstance(item, dict):
            return ["not a JSON object"]
        problems: list[str] = []
        unknown = sorted(set(item) - assumptions.CALL_OBJECT_KEYS)
        if unknown:
            problems.append("unknown key " + ", ".join(json.dumps(k) for k in unknown))

        is_telephone = False
        if "to" not in item:
            problems.append("to: mandatory, missing")
        elif not isinstance(item["to"], str):
            problems.append("to: must be a string")
        elif not item["to"]:
            problems.append("to: empty")
        else:
            is_telephone, problem = classify_destination(
                item["to"], self._numbers.telephone_problem
            )
            if problem:
                problems.append(f"to: {problem}")

        caller = item.get("from")
        if "from" in item and not isinstance(caller, str):
            problems.append("from: must be a string")
        elif is_telephone:
            if caller is None:
                problems.append("from: required when to is a telephone number")
            else:
                problem = self._numbers.caller_id_problem(caller)
                if problem:
                    problems.append(f"from: {problem}")

        token = item.get("token")
        if "token" in item and not isinstance(token, str):
            problems.append("token: must be a string")
        elif token is not None and len(token) > TOKEN_MAX_CHARS:
            problems.append(f"token: longer than {TOKEN_MAX_CHARS} characters")

        if "outbound_parameters" in item and not isinstance(item["outbound_parameters"], str):
            problems.append("outbound_parameters: must be a string")

        if "extra_sip_headers" in item:
            problems.extend(sip_header_problems(item["extra_sip_headers"]))
        return problems
