"""The component: the `filter` interface of `portcullis:plugin@0.3.0` over policy.py.

Built with componentize-py's default flags against the `filter-plugin` world:
    componentize-py -d ../../wit -w filter-plugin componentize app -o deny-list-py.wasm
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import filter as f
from wit_world.imports import log, types

import policy

# One instance serves one step configuration: `configure` runs once per instance.
RULES = None

NO_EDITS = types.HeaderEdits(remove=[], set=[], append=[])


class Filter(exports.Filter):
    def configure(self, config: str) -> None:
        global RULES
        try:
            RULES = policy.parse_config(config)
        except policy.ConfigError as e:
            # A raised `Err(config-error)` is the `err` of the WIT's `result`.
            raise Err(types.ConfigError(pointer=e.pointer, message=e.message))

    def hooks(self) -> f.HookSet:
        return f.HookSet.ON_REQUEST

    def on_request(self, request: types.Request) -> f.FilterAction:
        rule = policy.denial(RULES, request.method(), request.path(), request.client_ip(), request.header("user-agent"))
        if rule is None:
            return f.FilterAction_Continue(NO_EDITS)
        log.emit(log.Level.INFO, "request denied", [("rule", rule), ("path", request.path())])
        headers = [types.Header(name="content-type", value="application/problem+json")]
        return f.FilterAction_Respond(types.LocalResponse(status=RULES.status, headers=headers, body=policy.problem(RULES, rule)))

    def on_response(self, request, response) -> f.FilterAction:
        # Never called: `hooks` does not name it.
        return f.FilterAction_Continue(NO_EDITS)
