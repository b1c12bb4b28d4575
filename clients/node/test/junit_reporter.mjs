// A node:test reporter writing JUnit XML with totals on the root element, the
// shape Bazel's test.xml (and tools/test.sh's count) expects. Counts the tests
// at the top level of each file.
function escape(s) {
  return String(s).replace(/[<>&"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' }[c]))
    .replace(/[\x00-\x08\x0b\x0c\x0e-\x1f]/g, '');
}

export default async function* junit(source) {
  const cases = [];
  for await (const event of source) {
    if ((event.type === 'test:pass' || event.type === 'test:fail') && event.data.nesting === 0
        && event.data.details?.type !== 'suite') {
      const error = event.type === 'test:fail' ? event.data.details.error : null;
      cases.push({ name: event.data.name, seconds: (event.data.details.duration_ms || 0) / 1000, error });
    }
  }
  const failures = cases.filter((c) => c.error).length;
  const attrs = `name="node_client" tests="${cases.length}" failures="${failures}" errors="0"`;
  yield `<?xml version="1.0" encoding="UTF-8"?>\n<testsuites ${attrs}>\n<testsuite ${attrs}>\n`;
  for (const c of cases) {
    yield `<testcase name="${escape(c.name)}" time="${c.seconds.toFixed(3)}"`;
    if (!c.error) {
      yield '/>\n';
    } else {
      const cause = c.error.cause || c.error;
      yield `><failure message="${escape(cause.message || cause)}">${escape(cause.stack || cause)}</failure></testcase>\n`;
    }
  }
  yield '</testsuite>\n</testsuites>\n';
}
