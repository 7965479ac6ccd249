// Opens a report.html from disk in headless Chromium (Debian's, driven by playwright-core from
// target/web, installed by `cargo xtask setup`) with the network off, does what a person does
// (click each stall in the table, zoom the timeline, search a function) and prints what the page
// showed as one JSON object on stdout. The Rust test (tests/tests/report_html.rs) judges it.
//
// usage: node report_html.cjs REPORT_HTML SCREENSHOT_PNG [SEARCH_TERM | --plain]
// --plain: only open the page (the longest stall selected) and take the screenshot (the demo's).
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.join(__dirname, '..', '..');
const playwrightPath = path.join(root, 'target', 'web', 'node_modules', 'playwright-core');
let chromium;
try {
  ({ chromium } = require(playwrightPath));
} catch (err) {
  console.error(`playwright-core is missing from ${playwrightPath}: run \`cargo xtask setup\` (${err.message})`);
  process.exit(2);
}
const CHROMIUM = '/usr/bin/chromium';
if (!fs.existsSync(CHROMIUM)) {
  console.error(`${CHROMIUM} is missing: run \`cargo xtask setup\` (it installs Debian's chromium)`);
  process.exit(2);
}

async function main() {
  const [reportPath, screenshotPath, searchTerm] = process.argv.slice(2);
  if (!reportPath || !screenshotPath) {
    console.error('usage: node report_html.cjs REPORT_HTML SCREENSHOT_PNG [SEARCH_TERM]');
    process.exit(2);
  }
  const url = 'file://' + path.resolve(reportPath);
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'stallscope-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    offline: true,
    viewport: { width: 1400, height: 1000 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const result = { console_errors: [], page_errors: [], requests: [], stalls: [] };
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.on('console', (msg) => {
      if (msg.type() === 'error' || msg.type() === 'warning') result.console_errors.push(`${msg.type()}: ${msg.text()}`);
    });
    page.on('pageerror', (err) => result.page_errors.push(String(err)));
    page.on('request', (req) => {
      if (req.url() !== url) result.requests.push(req.url());
    });
    await page.goto(url, { waitUntil: 'load' });
    await page.waitForSelector('body[data-ready="true"]', { timeout: 15000 });
    result.title = await page.title();
    result.header = await page.locator('#header').innerText();
    if (searchTerm === '--plain') {
      await page.screenshot({ path: screenshotPath, fullPage: true });
      process.stdout.write(JSON.stringify(result) + '\n');
      return;
    }

    // Click every stall row, as a person would, and read the icicle the page drew for it.
    const ids = await page.$$eval('#stalls tbody tr.stall-row', (rows) => rows.map((r) => r.dataset.stall));
    for (const id of ids) {
      const row = page.locator(`#stalls tbody tr[data-stall="${id}"]`);
      await row.click();
      await page.waitForFunction((sid) => {
        const r = document.querySelector(`#stalls tbody tr[data-stall="${sid}"]`);
        return r && r.classList.contains('selected');
      }, id);
      const cells = await row.locator('td').allInnerTexts();
      const frames = await page.$$eval('#flame g.frame', (gs) => gs.map((g) => g.getAttribute('name')));
      result.stalls.push({
        id,
        cells,
        title: await page.locator('#detail-title').innerText(),
        breakdown: await page.locator('#breakdown').innerText(),
        causes: await page.locator('#causes').innerText(),
        task: await page.locator('#task').innerText(),
        frames,
      });
    }

    // Sort by duration (descending after one click on a fresh column, the default already):
    // the first row must then be the longest.
    await page.locator('#stalls th', { hasText: 'duration' }).click();
    await page.locator('#stalls th', { hasText: 'duration' }).click();
    result.first_row_after_sort = await page.locator('#stalls tbody tr.stall-row').first().getAttribute('data-stall');

    // Zoom the timeline with the mouse wheel over it: its axis must change.
    const svg = page.locator('#timeline svg');
    const ticksBefore = await page.$$eval('#timeline svg .tick text', (ts) => ts.map((t) => t.textContent));
    const box = await svg.boundingBox();
    if (box) {
      await page.mouse.move(box.x + box.width * 0.6, box.y + 10);
      for (let i = 0; i < 5; i++) await page.mouse.wheel(0, -400);
      await page.waitForTimeout(300);
    }
    const ticksAfter = await page.$$eval('#timeline svg .tick text', (ts) => ts.map((t) => t.textContent));
    result.timeline = { rows: await page.$$eval('#timeline .row-label', (ls) => ls.map((l) => l.textContent)),
      stalls: await page.$$eval('#timeline rect.stall', (rs) => rs.length),
      // Each iteration mark's data: [start µs, duration µs, iterations, busy µs, longest µs].
      iterations: await page.$$eval('#timeline rect.iteration', (rs) => rs.map((r) => r.__data__.m)),
      stall_marks: await page.$$eval('#timeline rect.stall', (rs) => rs.map((r) => [r.__data__.start_us, r.__data__.duration_ns / 1000])),
      ticks_before: ticksBefore, ticks_after: ticksAfter };

    if (searchTerm) {
      await page.locator('#search').fill(searchTerm);
      await page.waitForTimeout(200);
      result.search = {
        term: searchTerm,
        visible_rows: await page.$$eval('#stalls tbody tr.stall-row:not(.hidden)', (rs) => rs.map((r) => r.dataset.stall)),
        message: await page.locator('#search-result').innerText(),
      };
      // Open the first matching stall: the searched frames are highlighted in its icicle.
      const first = result.search.visible_rows[0];
      if (first !== undefined) {
        await page.locator(`#stalls tbody tr[data-stall="${first}"]`).click();
        await page.waitForTimeout(200);
        result.search.highlighted = await page.$$eval('#flame g.frame', (gs) =>
          gs.filter((g) => (g.querySelector('rect').getAttribute('fill') || '').toLowerCase() === '#e600e6')
            .map((g) => g.getAttribute('name')));
      }
    }
    await page.screenshot({ path: screenshotPath, fullPage: true });
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((err) => {
  console.error(`browser check failed: ${err && err.stack ? err.stack : err}`);
  process.exit(1);
});
