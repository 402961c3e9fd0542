// Validates AsyncAPI documents with the official parser (@asyncapi/parser, its default
// rulesets): exits 1 when any document has an error or a warning. Offline once installed.
//   node tests/asyncapi/check.mjs doc.json [more.json ...]
import { readFileSync } from 'node:fs';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';

const names = { 0: 'error', 1: 'warning', 2: 'info', 3: 'hint' };
const parser = new Parser();
let failed = false;
for (const path of process.argv.slice(2)) {
  const { document, diagnostics } = await parser.parse(readFileSync(path, 'utf8'), { source: path });
  const bad = diagnostics.filter((d) => d.severity <= DiagnosticSeverity.Warning);
  for (const d of diagnostics) {
    console.log(`${path}: ${names[d.severity]} ${d.code} at /${d.path.join('/')}: ${d.message}`);
  }
  if (!document || bad.length) {
    failed = true;
  } else {
    const info = document.info();
    console.log(
      `${path}: ok: AsyncAPI ${document.version()} "${info.title()}" ${info.version()}, ` +
        `${document.channels().length} channels, ${document.operations().length} operations, ` +
        `${document.servers().length} server(s), ${diagnostics.length} info/hint diagnostics`,
    );
  }
}
process.exit(failed ? 1 : 0);
