import { test } from "node:test";
import assert from "node:assert/strict";
import { ConfigError, decide, parseConfig, requestedVersion, responseHeaders } from "../src/policy.js";

test("configuration errors point at the field", () => {
  assert.throws(() => parseConfig("{}"), (e) => e instanceof ConfigError && e.pointer === "/allowed");
  assert.throws(() => parseConfig('{"allowed":["1"],"default":"2"}'), (e) => e.pointer === "/default");
  assert.throws(() => parseConfig('{"allowed":["1"],"deprecated":["3"]}'), (e) => e.pointer === "/deprecated/0");
  assert.throws(() => parseConfig('{"allowed":["1"],"colour":"red"}'), (e) => e.pointer === "/colour");
  assert.throws(() => parseConfig("not json"), (e) => e.pointer === "");
});

test("the header wins over the query, and the default applies last", () => {
  const s = parseConfig('{"allowed":["1","2"],"query":"api-version","default":"1"}');
  assert.equal(requestedVersion(s, "2", "api-version=1"), "2");
  assert.equal(requestedVersion(s, undefined, "x=y&api-version=2"), "2");
  assert.equal(requestedVersion(s, undefined, null), "1");
});

test("unknown or missing versions get a problem document", () => {
  const s = parseConfig('{"allowed":["1","2"]}');
  assert.deepEqual(decide(s, "2"), { allow: true, version: "2" });
  const refused = decide(s, "3");
  assert.equal(refused.status, 400);
  assert.deepEqual(refused.problem.allowed, ["1", "2"]);
  assert.match(decide(s, null).problem.detail, /names no API version/);
});

test("deprecated versions are marked on the response", () => {
  const s = parseConfig('{"allowed":["1","2"],"deprecated":["1"],"sunset":"Sat, 01 May 2027 00:00:00 GMT"}');
  assert.deepEqual(responseHeaders(s, "2"), []);
  assert.deepEqual(responseHeaders(s, "1").map((h) => h.name), ["deprecation", "sunset"]);
});
