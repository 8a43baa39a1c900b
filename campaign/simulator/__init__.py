"""An Aculab Cloud simulator: the web services of docs/aculab.md over real HTTP.

It is as strict as Aculab is documented to be, and follows campaign.assumptions
wherever the documentation is silent, because every test of the engine runs
against it: a lenient simulator would let a broken client pass.

Its checks are written independently of the engine's own code (phonenumbers is
called directly here) so that one shared bug cannot hide on both sides.

The parts, one concern each:
  account.py        Simulator, the public face composing the parts below
  config.py         SimulatorConfig, the account's settings
  app.py            the aiohttp application: routes, counting, error shapes
  refusals.py       error statuses and the documented error body
  auth.py           HTTP Basic authentication of services and the account
  validation.py     request parameters and rest_calls' call objects
  destinations.py   what can be dialled: numbers, caller IDs, SIP headers
  service_start.py  the service_start endpoint and the record of its requests
  services.py       application_status and the outbound queues
  calls.py          one call and what is reported of it (status, final page)
  book.py           every call: pacing into the queue, outcomes, replays, purge
  final_pages.py    final pages pushed to the engine as calls finish
  faults.py         which faults to inject (settings)
  faulty_answers.py how each fault answers
  listener.py       the HTTP server's life: start, stop, outages
  admin.py          the /_simulator/ endpoints
  cli.py            `campaign simulator`: options and the server runner
"""

from __future__ import annotations

from campaign.simulator.account import Simulator
from campaign.simulator.calls import StartedCall
from campaign.simulator.cli import configure_parser, faults_from_args, run_from_args
from campaign.simulator.config import (
    CALL_CAUSES,
    DEFAULT_REQUEST_RECORD_LIMIT,
    AccountType,
    SimulatorConfig,
)
from campaign.simulator.destinations import DESTINATION_PREFIXES, destination_key
from campaign.simulator.faults import (
    FAULT_KINDS,
    MALFORMED_SHAPES,
    FaultKind,
    Faults,
    MalformedShape,
)
from campaign.simulator.final_pages import CallbackOutcome, CallbackRecord
from campaign.simulator.listener import Outage
from campaign.simulator.service_start import StartRequest
from campaign.simulator.validation import TOKEN_MAX_CHARS

__all__ = [
    "CALL_CAUSES",
    "DEFAULT_REQUEST_RECORD_LIMIT",
    "DESTINATION_PREFIXES",
    "FAULT_KINDS",
    "MALFORMED_SHAPES",
    "TOKEN_MAX_CHARS",
    "AccountType",
    "CallbackOutcome",
    "CallbackRecord",
    "FaultKind",
    "Faults",
    "MalformedShape",
    "Outage",
    "Simulator",
    "SimulatorConfig",
    "StartRequest",
    "StartedCall",
    "configure_parser",
    "destination_key",
    "faults_from_args",
    "run_from_args",
]
