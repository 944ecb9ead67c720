// The component: the `filter` interface of `portcullis:plugin@0.3.0` over the policy in
// policy.js. Built with componentize-js's default flags against the `filter-plugin` world:
//   npm run build
import { emit } from "portcullis:plugin/log@0.3.0";
import { ConfigError, decide, parseConfig, requestedVersion, responseHeaders } from "./policy.js";

let settings = null;
const noEdits = () => ({ remove: [], set: [], append: [] });

export const filter = {
  // A thrown `{ pointer, message }` is the `config-error` of the WIT's `result`.
  configure(text) {
    try {
      settings = parseConfig(text);
    } catch (e) {
      if (e instanceof ConfigError) throw { pointer: e.pointer, message: e.message };
      throw { pointer: "", message: String(e) };
    }
  },

  // The response hook costs a call per request: ask for it only when there is something to add.
  hooks() {
    return { onRequest: true, onResponse: settings.deprecated.length > 0 };
  },

  onRequest(request) {
    const version = requestedVersion(settings, request.header(settings.header), request.query());
    const decision = decide(settings, version);
    if (decision.allow) {
      // Upstreams see one normalized header whichever way the client named the version.
      return { tag: "continue", val: { remove: [], set: [{ name: settings.header, value: decision.version }], append: [] } };
    }
    emit("info", "unsupported API version", [["version", String(version)], ["path", request.path()]]);
    return {
      tag: "respond",
      val: {
        status: decision.status,
        headers: [{ name: "content-type", value: "application/problem+json" }],
        body: new TextEncoder().encode(JSON.stringify(decision.problem)),
      },
    };
  },

  onResponse(request, _response) {
    const version = request.header(settings.header);
    return { tag: "continue", val: { ...noEdits(), append: responseHeaders(settings, version) } };
  },
};
