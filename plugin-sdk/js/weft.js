// Write weft commands in JavaScript.
//
// A plugin is an ES module that registers plain functions with `command`:
//
//     import { command, call, log } from "./weft.js";
//
//     command("reshape.pick", { resources: ["json"], version: "1.0.0" }, (record, fields) => {
//       log.info(`picking ${fields.length} fields`);
//       return Object.fromEntries(fields.map((f) => [f, record[f]]));
//     });
//
// `weft plugin build DIR` turns the module into a WebAssembly component with componentize-js
// (0.23.0) against weft's WIT contract; this file is added to the build by it, so the import
// above resolves there. The component imports nothing beyond the contract: the build disables
// WASI http and the fetch event.
//
// Arguments and results are JSON values. Keyword arguments are matched to the parameter names
// (given as `params`, or read from the function's own parameter list); arguments that do not fit
// are an `invalid-args` error naming the command. An exception the function throws fails the
// call (error 1003) with `ErrorName: message`; throw an `ArgumentError` for `invalid-args`.

let host = null;

/** Connects the SDK to the host's imports; called by the entry module the build generates. */
export function bindHost(imports) {
  host = imports;
}

/** Thrown by a command whose arguments are wrong: the caller gets an `invalid-args` error. */
export class ArgumentError extends Error {
  constructor(message) {
    super(message);
    this.name = "ArgumentError";
  }
}

/**
 * A command reached through `call` did not produce a result. `kind` is one of `invalid-args`,
 * `failed`, `not-found`, `denied` and `timeout`. Left uncaught, it fails the calling command with
 * the same kind and message.
 */
export class CallError extends Error {
  constructor(kind, message) {
    super(message);
    this.name = "CallError";
    this.kind = kind;
  }
}

const commands = new Map();

/** The parameter list of a plain function or arrow function: names in order, and whether it ends in a rest parameter. */
function paramList(fn) {
  const source = Function.prototype.toString.call(fn);
  const match = source.match(/^[^(=]*\(([^)]*)\)/) ?? source.match(/^\s*(?:async\s+)?([A-Za-z_$][\w$]*)\s*=>/);
  if (!match) return { names: [], required: 0, rest: true };
  const parts = match[1]
    .split(",")
    .map((p) => p.trim())
    .filter((p) => p !== "");
  const names = parts.map((p) => p.replace(/=.*$/s, "").replace(/^\.\.\./, "").trim());
  const optional = parts.findIndex((p) => p.includes("=") || p.startsWith("..."));
  return {
    names: names.filter((p) => /^[A-Za-z_$][\w$]*$/.test(p)),
    required: optional < 0 ? parts.length : optional,
    rest: parts.some((p) => p.startsWith("...")),
  };
}

/**
 * Serves `fn` as the fabric command `name`.
 * options: `resources` (tags), `version` (default "1.0.0"), `description`, `params` (names in
 * positional order; read from `fn` when left out).
 */
export function command(name, options, fn) {
  if (typeof options === "function") {
    fn = options;
    options = {};
  }
  if (typeof name !== "string" || typeof fn !== "function") {
    throw new TypeError("command(name, [options], fn): a name and a function are needed");
  }
  if (commands.has(name)) throw new Error(`two functions claim the command ${name}`);
  const list = paramList(fn);
  commands.set(name, {
    fn,
    rest: options.params === undefined && list.rest,
    required: options.params === undefined ? list.required : 0,
    spec: {
      name,
      resources: [...(options.resources ?? [])],
      version: options.version ?? "1.0.0",
      description: options.description ?? "",
      params: [...(options.params ?? list.names)],
    },
  });
}

/**
 * Calls any command of the fabric, routed like a client call, and returns its result.
 * Throws a `CallError` when the command fails, is not found or runs out of time.
 */
export function call(fun, args = [], kwargs = {}, resources = []) {
  let result;
  try {
    result = host.call(fun, JSON.stringify(args), JSON.stringify(kwargs), resources);
  } catch (e) {
    const error = e && e.payload !== undefined ? e.payload : e;
    if (error && typeof error.tag === "string") throw new CallError(error.tag, String(error.val));
    throw new CallError("failed", String(error));
  }
  return JSON.parse(result);
}

/** Log lines become the node's `tracing` events, tagged with the plugin and the command. */
export const log = Object.fromEntries(
  ["trace", "debug", "info", "warn", "error"].map((level) => [level, (message) => host.log(level, String(message))]),
);

function fail(tag, message) {
  return { tag, val: message };
}

/** The component's export: the commands this plugin serves. */
export function describe() {
  return [...commands.values()].map((c) => c.spec);
}

/** The component's export: runs one command. */
export function invoke(name, argsJson, kwargsJson) {
  const found = commands.get(name);
  if (!found) throw fail("not-found", `this plugin does not serve ${name}`);
  let args;
  let kwargs;
  try {
    args = argsJson ? JSON.parse(argsJson) : [];
    kwargs = kwargsJson ? JSON.parse(kwargsJson) : {};
  } catch (e) {
    throw fail("invalid-args", `${name}: arguments are not JSON: ${e.message}`);
  }
  if (!Array.isArray(args) || kwargs === null || typeof kwargs !== "object" || Array.isArray(kwargs)) {
    throw fail("invalid-args", `${name}: arguments must be a list and keyword arguments an object`);
  }
  const params = found.spec.params;
  const positional = [...args];
  if (positional.length > params.length && !found.rest) {
    throw fail("invalid-args", `${name}: takes ${params.length} arguments but ${positional.length} were given`);
  }
  for (const [key, value] of Object.entries(kwargs)) {
    const at = params.indexOf(key);
    if (at < 0) throw fail("invalid-args", `${name}: no parameter named ${key}`);
    if (at < args.length) throw fail("invalid-args", `${name}: ${key} is given twice`);
    positional[at] = value;
  }
  for (let at = 0; at < found.required; at++) {
    if (positional[at] === undefined) throw fail("invalid-args", `${name}: missing argument ${params[at]}`);
  }
  let result;
  try {
    result = found.fn(...positional);
  } catch (e) {
    if (e instanceof ArgumentError) throw fail("invalid-args", `${name}: ${e.message}`);
    if (e instanceof CallError) throw fail(e.kind, e.message);
    if (e instanceof Error) throw fail("failed", `${e.name}: ${e.message}`);
    throw fail("failed", String(e));
  }
  return JSON.stringify(result === undefined ? null : result);
}
