// JSON reshaping: pick and rename fields, group records, total a field with `math.add`, and render
// a template from a value.

import { ArgumentError, call, command, log } from "./weft.js";

function record(value, what = "record") {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new ArgumentError(`${what} must be an object`);
  }
  return value;
}

function records(value) {
  if (!Array.isArray(value)) throw new ArgumentError("records must be a list of objects");
  return value.map((r) => record(r));
}

/** The value at a dotted path (`a.b.0.c`), or undefined. */
function lookup(value, path) {
  return path.split(".").reduce((at, key) => (at === null || at === undefined ? undefined : at[key]), value);
}

command(
  "reshape.pick",
  { resources: ["json"], version: "1.0.0", description: "Keep only the given fields of a record." },
  (value, fields) => {
    const from = record(value);
    if (!Array.isArray(fields)) throw new ArgumentError("fields must be a list of names");
    return Object.fromEntries(fields.filter((f) => f in from).map((f) => [f, from[f]]));
  },
);

command(
  "reshape.rename",
  { resources: ["json"], version: "1.0.0", description: "Rename a record's fields by a mapping of old to new names." },
  (value, mapping) =>
    Object.fromEntries(Object.entries(record(value)).map(([k, v]) => [record(mapping, "mapping")[k] ?? k, v])),
);

command(
  "reshape.group_by",
  { resources: ["json"], version: "1.0.0", description: "Group records by the value of a field." },
  (rows, field) => {
    const groups = {};
    for (const row of records(rows)) {
      const key = String(lookup(row, field));
      (groups[key] ??= []).push(row);
    }
    return groups;
  },
);

command(
  "reshape.total",
  { resources: ["json"], version: "1.0.0", description: "Sum a numeric field over records, adding with the math.add command." },
  (rows, field) => {
    let total = 0;
    for (const row of records(rows)) {
      const value = lookup(row, field);
      if (typeof value !== "number") throw new ArgumentError(`${field} is not a number in every record`);
      total = call("math.add", [total, value]);
    }
    log.debug(`totalled ${rows.length} records`);
    return total;
  },
);

command(
  "reshape.render",
  { resources: ["json"], version: "1.0.0", description: "Fill a template's {{path}} placeholders from a value." },
  (template, value) => {
    if (typeof template !== "string") throw new ArgumentError("template must be a string");
    return template.replace(/\{\{\s*([\w.]+)\s*\}\}/g, (_, path) => {
      const found = lookup(value, path);
      if (found === undefined) throw new Error(`the value has nothing at ${path}`);
      return typeof found === "string" ? found : JSON.stringify(found);
    });
  },
);
