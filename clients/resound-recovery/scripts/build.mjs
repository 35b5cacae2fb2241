// Writes the CommonJS twin of index.js (index.cjs) and of its types
// (index.d.cts). No bundler: the module is one file with top-level
// `export function` / `export const` only, so dropping the keyword and
// assigning module.exports is the whole transformation.
//
//   node scripts/build.mjs          write index.cjs and index.d.cts
//   node scripts/build.mjs --check  fail if they are not up to date
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const read = (f) => fs.readFileSync(path.join(dir, f), 'utf8');

function buildCjs(esm) {
  const names = [];
  const body = esm.replace(/^export (function|const) ([A-Za-z_$][\w$]*)/gm, (_, kind, name) => {
    names.push(name);
    return `${kind} ${name}`;
  });
  if (/^\s*(export|import)\b/m.test(body)) throw new Error('index.js has an import or export the build does not handle');
  return `'use strict';\n// Generated from index.js by scripts/build.mjs: do not edit.\n${body}\nmodule.exports = { ${names.join(', ')} };\n`;
}

const outputs = {
  'index.cjs': buildCjs(read('index.js')),
  'index.d.cts': read('index.d.ts'),
};

const check = process.argv.includes('--check');
let stale = [];
for (const [file, text] of Object.entries(outputs)) {
  const p = path.join(dir, file);
  const current = fs.existsSync(p) ? fs.readFileSync(p, 'utf8') : null;
  if (current === text) continue;
  if (check) stale.push(file);
  else fs.writeFileSync(p, text);
}
if (stale.length) {
  console.error(`out of date: ${stale.join(', ')} (run: node scripts/build.mjs)`);
  process.exit(1);
}
