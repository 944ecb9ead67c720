// The API version gate's policy, free of component imports so `node --test` can run it.
//
// Configuration (JSON):
//   header      request header carrying the version (default `x-api-version`)
//   query       query parameter consulted when the header is absent (optional)
//   allowed     versions served, a non-empty list of strings
//   default     version assumed when the request names none (optional; must be allowed)
//   deprecated  allowed versions answered with `Deprecation: true` (RFC 9745) and, when
//               `sunset` names a date for them, `Sunset` (RFC 8594)
//   sunset      HTTP-date sent in `Sunset` for deprecated versions (optional)

/** A refused configuration: `pointer` is an RFC 6901 JSON pointer into it. */
export class ConfigError extends Error {
  constructor(pointer, message) {
    super(message);
    this.pointer = pointer;
  }
}

/** Parses and checks configuration text; throws ConfigError. */
export function parseConfig(text) {
  let doc;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new ConfigError("", `not JSON: ${e.message}`);
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) {
    throw new ConfigError("", "expected an object");
  }
  const known = ["header", "query", "allowed", "default", "deprecated", "sunset"];
  for (const key of Object.keys(doc)) {
    if (!known.includes(key)) throw new ConfigError(`/${key}`, `unknown field; expected one of ${known.join(", ")}`);
  }
  const header = doc.header ?? "x-api-version";
  if (typeof header !== "string" || !/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(header)) {
    throw new ConfigError("/header", "a lowercase header field name");
  }
  if (doc.query !== undefined && (typeof doc.query !== "string" || doc.query === "")) {
    throw new ConfigError("/query", "a query parameter name");
  }
  if (!Array.isArray(doc.allowed) || doc.allowed.length === 0) {
    throw new ConfigError("/allowed", "a non-empty list of version strings");
  }
  doc.allowed.forEach((v, i) => {
    if (typeof v !== "string" || v === "") throw new ConfigError(`/allowed/${i}`, "a non-empty string");
  });
  if (doc.default !== undefined && !doc.allowed.includes(doc.default)) {
    throw new ConfigError("/default", "must be one of `allowed`");
  }
  const deprecated = doc.deprecated ?? [];
  if (!Array.isArray(deprecated)) throw new ConfigError("/deprecated", "a list of versions");
  deprecated.forEach((v, i) => {
    if (!doc.allowed.includes(v)) throw new ConfigError(`/deprecated/${i}`, "must be one of `allowed`");
  });
  if (doc.sunset !== undefined && (typeof doc.sunset !== "string" || Number.isNaN(Date.parse(doc.sunset)))) {
    throw new ConfigError("/sunset", "an HTTP-date, e.g. `Sat, 01 May 2027 00:00:00 GMT`");
  }
  return { header, query: doc.query ?? null, allowed: doc.allowed, fallback: doc.default ?? null, deprecated, sunset: doc.sunset ?? null };
}

/** The version a request names: its header, else its query parameter, else the default. */
export function requestedVersion(settings, header, query) {
  if (header !== undefined && header !== null) return header.trim();
  if (settings.query !== null && query) {
    for (const pair of query.split("&")) {
      const [name, value = ""] = pair.split("=");
      if (decodeURIComponent(name) === settings.query) return decodeURIComponent(value.replace(/\+/g, " "));
    }
  }
  return settings.fallback;
}

/**
 * The decision for a request naming `version` (or null): `{ allow: true, version }` or
 * `{ allow: false, status, problem }`, where `problem` is an RFC 9457 problem document.
 */
export function decide(settings, version) {
  if (version !== null && settings.allowed.includes(version)) return { allow: true, version };
  const detail =
    version === null
      ? `The request names no API version; send \`${settings.header}\`.`
      : `API version \`${version}\` is not served.`;
  return {
    allow: false,
    status: 400,
    problem: { type: "about:blank", title: "Unsupported API version", status: 400, detail, allowed: settings.allowed },
  };
}

/** Response headers for a request that used `version`: RFC 9745 `Deprecation`, RFC 8594 `Sunset`. */
export function responseHeaders(settings, version) {
  if (!settings.deprecated.includes(version)) return [];
  const headers = [{ name: "deprecation", value: "true" }];
  if (settings.sunset !== null) headers.push({ name: "sunset", value: settings.sunset });
  return headers;
}
