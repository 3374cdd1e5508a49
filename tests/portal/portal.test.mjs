// Drives the cardgate portal in headless Chromium.
//
// The test starts `cardgate server` and several `cardgate proxy` processes
// on loopback, each proxy with the in-process simulated card and a different
// response from the simulated person at the card (approve, deny, never),
// and one proxy whose card is not connected. The proxies share one enrollment
// store and one simulated card state, and run one after the other, so users
// enrolled in the first phase can log in later.
//
// Environment:
//   CARDGATE_BIN        the binary (default: target/debug/cardgate)
//   CHROMIUM            the browser (default: /usr/bin/chromium)
//   PORTAL_SCREENSHOTS  folder for screenshots (default: screenshots/portal)
//   PORTAL_KEEP_TEMP=1  keep the temporary folder with configs and logs

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import dgram from 'node:dgram';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BINARY = process.env.CARDGATE_BIN || path.join(REPO, 'target', 'debug', 'cardgate');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOTS = process.env.PORTAL_SCREENSHOTS || path.join(REPO, 'screenshots', 'portal');

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
];

/** How long a started process may take before GET /health returns 200. */
const READY_TIMEOUT_MS = 30_000;

/** How long a stopped process may take to exit after SIGTERM before SIGKILL. */
const STOP_TIMEOUT_MS = 15_000;

/** Card deadline of the proxy whose simulated person never confirms. */
const NEVER_CONFIRM_TIMEOUT_S = 4;

/** Default wait for a text to appear on the page. */
const TEXT_TIMEOUT_MS = 15_000;

const EXPECTED_POLICY =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

// ---------------------------------------------------------------------------
// Processes

/** Processes this test started, by PID. Only these are ever signalled. */
const started = new Map();

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Starts the binary with `args`, writing its output to `logPath`. */
function startProcess(name, args, logPath) {
  const log = createWriteStream(logPath);
  const child = spawn(BINARY, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
  });
  child.stdout.pipe(log);
  child.stderr.pipe(log);
  const record = { name, child, logPath, exited: false, exitCode: null };
  child.on('exit', (code, signal) => {
    record.exited = true;
    record.exitCode = code === null ? signal : code;
  });
  started.set(child.pid, record);
  return record;
}

/** Sends SIGTERM and waits for the exit, with SIGKILL after STOP_TIMEOUT_MS. */
async function stopProcess(record) {
  if (!record || record.exited) {
    started.delete(record?.child.pid);
    return;
  }
  const exited = new Promise((resolve) => record.child.once('exit', resolve));
  process.kill(record.child.pid, 'SIGTERM');
  const stopped = await Promise.race([exited.then(() => true), sleep(STOP_TIMEOUT_MS).then(() => false)]);
  if (!stopped) {
    process.kill(record.child.pid, 'SIGKILL');
    await exited;
  }
  started.delete(record.child.pid);
}

// If the runner exits without the `after` hook, the children still die.
process.on('exit', () => {
  for (const [pid, record] of started) {
    if (!record.exited) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  }
});

function logTail(record, lines = 40) {
  try {
    const text = readFileSync(record.logPath, 'utf8').trimEnd().split('\n');
    return `--- last lines of ${record.name} (${record.logPath})\n` + text.slice(-lines).join('\n');
  } catch (error) {
    return `--- ${record.name}: no log (${error.message})`;
  }
}

function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket('udp4');
    socket.once('error', reject);
    socket.bind(0, '127.0.0.1', () => {
      const { port } = socket.address();
      socket.close(() => resolve(port));
    });
  });
}

/** Sends one HTTPS request to a process on 127.0.0.1 and resolves to {status, headers, body}. */
function httpsRequest(port, method, requestPath, tls) {
  return new Promise((resolve, reject) => {
    const request = https.request(
      {
        host: '127.0.0.1',
        port,
        method,
        path: requestPath,
        servername: 'localhost',
        ca: tls.ca,
        cert: tls.cert,
        key: tls.key,
        timeout: 5_000,
      },
      (response) => {
        const chunks = [];
        response.on('data', (chunk) => chunks.push(chunk));
        response.on('end', () =>
          resolve({ status: response.statusCode, headers: response.headers, body: Buffer.concat(chunks).toString('utf8') }),
        );
      },
    );
    request.on('timeout', () => request.destroy(new Error(`no answer from 127.0.0.1:${port} within 5 s`)));
    request.on('error', reject);
    request.end();
  });
}

/** Waits until GET /health returns 200, failing early when the process exits. */
async function waitForHealth(record, port, tls) {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let lastError = 'no attempt';
  while (Date.now() < deadline) {
    if (record.exited) {
      throw new Error(`${record.name} exited with ${record.exitCode} before it was ready\n${logTail(record)}`);
    }
    try {
      const response = await httpsRequest(port, 'GET', '/health', tls);
      if (response.status === 200) {
        return JSON.parse(response.body);
      }
      lastError = `HTTP ${response.status}: ${response.body}`;
    } catch (error) {
      lastError = error.message;
    }
    await sleep(100);
  }
  throw new Error(`${record.name} did not answer GET /health within ${READY_TIMEOUT_MS} ms (${lastError})\n${logTail(record)}`);
}

// ---------------------------------------------------------------------------
// The chain: certificates, configs, server and proxies

class Chain {
  constructor() {
    this.dir = mkdtempSync(path.join(os.tmpdir(), 'cardgate-portal-'));
    this.server = null;
    this.proxy = null;
  }

  file(name) {
    return path.join(this.dir, name);
  }

  async init() {
    execFileSync(BINARY, ['certs', 'init', '--out', this.file('certs')], { stdio: 'pipe' });
    const read = (name) => readFileSync(this.file(path.join('certs', name)));
    this.tls = { ca: read('ca.crt') };
    this.clientTls = { ca: read('ca.crt'), cert: read('proxy-client.crt'), key: read('proxy-client.key') };
  }

  async startServer() {
    this.serverPort = await freeTcpPort();
    writeFileSync(
      this.file('server.toml'),
      [
        `listen = "127.0.0.1:${this.serverPort}"`,
        '[tls]',
        'cert = "certs/server.crt"',
        'key = "certs/server.key"',
        'client_ca = "certs/ca.crt"',
        '[store]',
        'path = "server-store"',
        '',
      ].join('\n'),
    );
    this.server = startProcess('server', ['server', '--config', this.file('server.toml')], this.file('server.log'));
    await waitForHealth(this.server, this.serverPort, this.clientTls);
  }

  /**
   * Starts a proxy named `name` after stopping the previous one.
   * `device` is `sim` or a UDP device spec, `presence` is the simulated
   * person's response and `store` is the enrollment store's folder.
   */
  async startProxy(name, { device = 'sim', presence = 'approve', confirmTimeoutS = 30, store = 'proxy-store' } = {}) {
    await stopProcess(this.proxy);
    this.proxy = null;

    const port = await freeTcpPort();
    const config = this.file(`proxy-${name}.toml`);
    writeFileSync(
      config,
      [
        `listen = "127.0.0.1:${port}"`,
        '[tls]',
        'cert = "certs/proxy.crt"',
        'key = "certs/proxy.key"',
        '[upstream]',
        `url = "https://127.0.0.1:${this.serverPort}"`,
        'ca = "certs/ca.crt"',
        'client_cert = "certs/proxy-client.crt"',
        'client_key = "certs/proxy-client.key"',
        '[card]',
        `device = "${device}"`,
        `sim_presence = "${presence}"`,
        'sim_state = "card"',
        `confirm_timeout_s = ${confirmTimeoutS}`,
        '[store]',
        `path = "${store}"`,
        '[webauthn]',
        'rp_id = "localhost"',
        `origin = "https://localhost:${port}"`,
        // Chromium keeps idle connections open, and a proxy that waits the
        // default 10 s for them would slow every switch between proxies.
        '[http]',
        'shutdown_timeout_s = 1',
        '',
      ].join('\n'),
    );
    this.proxy = startProcess(`proxy-${name}`, ['proxy', '--config', config], this.file(`proxy-${name}.log`));
    this.proxyPort = port;
    this.health = await waitForHealth(this.proxy, port, this.tls);
    return `https://localhost:${port}`;
  }

  logs() {
    return [this.server, this.proxy].filter(Boolean).map((record) => logTail(record)).join('\n');
  }

  async stop() {
    await stopProcess(this.proxy);
    await stopProcess(this.server);
  }
}

// ---------------------------------------------------------------------------
// Browser helpers

/** Waits until the locator's text matches `pattern` and returns the text. */
async function waitForText(locator, pattern, timeout = TEXT_TIMEOUT_MS) {
  const deadline = Date.now() + timeout;
  let last = '';
  while (Date.now() < deadline) {
    last = ((await locator.textContent()) || '').trim();
    if (pattern.test(last)) {
      return last;
    }
    await sleep(50);
  }
  assert.fail(`expected text matching ${pattern} within ${timeout} ms; the last text was ${JSON.stringify(last)}`);
}

async function statusText(page) {
  return ((await page.locator('#status').textContent()) || '').replace(/\s+/g, ' ').trim();
}

/** Waits until the live region's whole text matches `pattern`. */
async function waitForStatus(page, pattern, timeout = TEXT_TIMEOUT_MS) {
  const deadline = Date.now() + timeout;
  let last = '';
  while (Date.now() < deadline) {
    last = await statusText(page);
    if (pattern.test(last)) {
      assert.doesNotMatch(last, /[{}]/, 'the status shows raw JSON');
      return last;
    }
    await sleep(50);
  }
  assert.fail(`expected the status to match ${pattern} within ${timeout} ms; it reads ${JSON.stringify(last)}`);
}

let shotNumber = 0;

async function screenshot(page, name) {
  shotNumber += 1;
  const file = path.join(SCREENSHOTS, `${String(shotNumber).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Opens the portal with no session cookie, so a failed step leaves no session behind. */
async function openFreshPage(context, page, base) {
  await context.clearCookies();
  await page.goto(base);
  await waitForStatus(page, /^Ready\. Enroll, or log in if you are already enrolled\.$/);
}

async function enroll(page, username, displayName = '') {
  await page.locator('#enroll-username').fill(username);
  await page.locator('#enroll-display-name').fill(displayName);
  await page.getByRole('button', { name: 'Enroll with the ChromeCard' }).click();
}

async function startLogin(page, username) {
  await page.locator('#login-username').fill(username);
  await page.getByRole('button', { name: 'Log in with the ChromeCard' }).click();
}

async function counterValues(page) {
  const values = await page.locator('#counter-values li').evaluateAll((items) => items.map((item) => item.dataset.value));
  return values.map((value) => Number(value));
}

// ---------------------------------------------------------------------------
// The tests

describe('cardgate portal in Chromium', { concurrency: 1 }, () => {
  const chain = new Chain();
  let context;
  let profileDir;
  let page;
  let base;
  const requestedHosts = new Set();
  const pageProblems = [];
  let failed = false;

  /** Runs a test body; on failure saves a screenshot and prints the logs. */
  function step(name, body, timeout = 60_000) {
    test(name, { timeout }, async () => {
      pageProblems.length = 0;
      try {
        await body();
        assert.deepEqual(pageProblems, [], 'the page logged errors');
      } catch (error) {
        failed = true;
        if (page) {
          await screenshot(page, `failed-${name.replace(/[^a-z0-9]+/gi, '-')}`).catch(() => {});
        }
        console.error(chain.logs());
        throw error;
      }
    });
  }

  before(async () => {
    assert.ok(existsSync(BINARY), `${BINARY} is missing; run \`cargo build\` first`);
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing; install Debian's chromium package`);
    rmSync(SCREENSHOTS, { recursive: true, force: true });
    mkdirSync(SCREENSHOTS, { recursive: true });

    await chain.init();
    await chain.startServer();
    base = await chain.startProxy('approve', { presence: 'approve' });

    profileDir = mkdtempSync(path.join(os.tmpdir(), 'cardgate-chromium-'));
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      ignoreHTTPSErrors: true,
      viewport: { width: 900, height: 900 },
    });
    context.on('request', (request) => requestedHosts.add(new URL(request.url()).host));
    page = context.pages()[0] || (await context.newPage());
    page.on('pageerror', (error) => pageProblems.push(`uncaught: ${error.message}`));
    page.on('console', (message) => {
      // Chromium logs every non-2xx response as a console error. The
      // tests provoke 401, 404 and 409 on purpose, so only other errors count.
      if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
        pageProblems.push(`console: ${message.text()}`);
      }
    });
  });

  after(async () => {
    if (context) {
      await context.close().catch(() => {});
    }
    if (profileDir) {
      rmSync(profileDir, { recursive: true, force: true });
    }
    await chain.stop();
    if (failed || process.env.PORTAL_KEEP_TEMP === '1') {
      console.error(`configs and logs kept in ${chain.dir}`);
    } else {
      rmSync(chain.dir, { recursive: true, force: true });
    }
  });

  step('page is served with its security policy', async () => {
    for (const [file, type] of [
      ['/', 'text/html; charset=utf-8'],
      ['/app.js', 'text/javascript; charset=utf-8'],
      ['/style.css', 'text/css; charset=utf-8'],
    ]) {
      const response = await httpsRequest(chain.proxyPort, 'GET', file, chain.tls);
      assert.equal(response.status, 200, `status of ${file}`);
      assert.equal(response.headers['content-type'], type, `Content-Type of ${file}`);
      assert.equal(response.headers['content-security-policy'], EXPECTED_POLICY, `Content-Security-Policy of ${file}`);
      assert.equal(response.headers['x-content-type-options'], 'nosniff', `X-Content-Type-Options of ${file}`);
    }
  });

  step('page has labels, live region and focus ring', async () => {
    await openFreshPage(context, page, base);
    await waitForText(page.locator('#card-health'), /^ChromeCard: (connected|not connected)/);

    const unlabelled = await page
      .locator('input, select, textarea')
      .evaluateAll((controls) => controls.filter((c) => !c.labels || c.labels.length === 0).map((c) => c.id || c.name));
    assert.deepEqual(unlabelled, [], 'controls without a <label>');

    const buttonsWithoutName = await page
      .locator('button')
      .evaluateAll((buttons) => buttons.filter((b) => b.textContent.trim() === '' && !b.getAttribute('aria-label')).length);
    assert.equal(buttonsWithoutName, 0, 'buttons without an accessible name');

    const live = page.locator('[aria-live="polite"]');
    assert.equal(await live.count(), 1, 'one polite live region');
    assert.equal(await live.getAttribute('id'), 'status');

    // The first Tab from the page start lands on the enroll username, and
    // its focus ring is drawn.
    await page.locator('body').focus();
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'enroll-username');
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    assert.notEqual(outline, 'none', 'the focused input has no outline');

    await screenshot(page, 'start');
  });

  step('page fits a narrow window', async () => {
    await page.setViewportSize({ width: 360, height: 740 });
    await openFreshPage(context, page, base);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow} px at 360 px`);
    await screenshot(page, 'narrow-360px');
    await page.setViewportSize({ width: 900, height: 900 });
  });

  step('full flow: enroll, login, counter twice, logout', async () => {
    await openFreshPage(context, page, base);

    // Enroll.
    await page.locator('#enroll-username').fill('alice');
    await page.locator('#enroll-display-name').fill('Alice Example');
    await screenshot(page, 'enroll-filled');
    await page.getByRole('button', { name: 'Enroll with the ChromeCard' }).click();
    await waitForStatus(page, /alice is enrolled on the ChromeCard\. You can log in now\./);
    assert.equal(await page.locator('#card-prompt').isHidden(), true, 'the card prompt closes');
    assert.equal(await page.locator('#login-username').inputValue(), 'alice', 'the login form is prefilled');
    await screenshot(page, 'enrolled');

    // Log in.
    await page.getByRole('button', { name: 'Log in with the ChromeCard' }).click();
    await waitForStatus(page, /Logged in as alice\./);
    assert.equal(await page.locator('#session-panel').isVisible(), true);
    assert.equal(await page.locator('#session-user').textContent(), 'alice');
    assert.equal(await page.locator('#enroll-panel').isHidden(), true, 'the enroll form hides while logged in');

    const firstLeft = await waitForText(page.locator('#session-left'), /^\d+ (h|min|s)\b/);
    await sleep(2_100);
    const laterLeft = await page.locator('#session-left').textContent();
    assert.notEqual(laterLeft, firstLeft, 'the session countdown moves');

    const cookies = await context.cookies(base);
    const sessionCookie = cookies.find((cookie) => cookie.name === 'cardgate_session');
    assert.ok(sessionCookie, `no session cookie among ${cookies.map((c) => c.name).join(', ')}`);
    assert.equal(sessionCookie.httpOnly, true, 'the session cookie is HttpOnly');
    assert.equal(sessionCookie.secure, true, 'the session cookie is Secure');
    assert.equal(sessionCookie.sameSite, 'Strict', 'the session cookie is SameSite=Strict');
    assert.equal(await page.evaluate(() => document.cookie), '', 'the page can read no cookie');

    await waitForText(page.locator('#enrollment-summary'), /This is your enrollment\./);
    assert.equal(await page.locator('#enrollment-display-name').textContent(), 'Alice Example');
    await screenshot(page, 'logged-in');

    // Two counter calls return increasing values, both shown.
    await page.getByRole('button', { name: 'Call the protected counter' }).click();
    await waitForStatus(page, /The protected counter returned \d+\./);
    await page.getByRole('button', { name: 'Call the protected counter' }).click();
    await waitForText(page.locator('#counter-values'), /\d+ \(at .*\)\s*\d+ \(at .*\)/);
    const [newest, oldest] = await counterValues(page);
    assert.ok(Number.isInteger(oldest), `first counter value ${oldest}`);
    assert.ok(Number.isInteger(newest), `second counter value ${newest}`);
    assert.ok(newest > oldest, `the second value ${newest} is not above the first ${oldest}`);
    assert.equal(await page.locator('#counter-latest').textContent(), `Latest value: ${newest}`);
    await waitForStatus(page, new RegExp(`The protected counter returned ${newest}\\.`));
    await screenshot(page, 'counter-twice');

    // Log out.
    await page.getByRole('button', { name: 'Log out' }).click();
    await waitForStatus(page, /alice logged out\./);
    assert.equal(await page.locator('#session-panel').isHidden(), true);
    assert.equal(await page.locator('#login-panel').isVisible(), true);
    const cookiesAfter = await context.cookies(base);
    assert.equal(cookiesAfter.some((cookie) => cookie.name === 'cardgate_session'), false, 'the cookie is removed');
    await screenshot(page, 'logged-out');
  });

  step('counter fetch after logout gets 401', async () => {
    await openFreshPage(context, page, base);
    await enroll(page, 'bob');
    await waitForStatus(page, /bob is enrolled on the ChromeCard\./);
    await startLogin(page, 'bob');
    await waitForStatus(page, /Logged in as bob\./);

    const callCounter = () =>
      page.evaluate(async () => {
        const response = await fetch('/resource/counter', { method: 'POST' });
        return { status: response.status, body: await response.json() };
      });

    // The same request succeeds with the session, so the 401 below comes
    // from the logout and not from the request's form.
    const before = await callCounter();
    assert.equal(before.status, 200, `counter before logout: ${JSON.stringify(before.body)}`);

    await page.getByRole('button', { name: 'Log out' }).click();
    await waitForStatus(page, /bob logged out\./);
    const reply = await callCounter();
    assert.equal(reply.status, 401);
    assert.equal(reply.body.ok, false);
    assert.equal(reply.body.error, 'unauthorized');
  });

  step('enroll conflict reads as a sentence', async () => {
    await openFreshPage(context, page, base);
    await enroll(page, 'alice');
    const text = await waitForStatus(page, /Enrollment of alice failed\./);
    assert.match(text, /already enrolled/i, 'the details say why');
    await screenshot(page, 'enroll-conflict');
  });

  step('login of unknown user reads as a sentence', async () => {
    await openFreshPage(context, page, base);
    await startLogin(page, 'nobody');
    const text = await waitForStatus(page, /Login of nobody failed\./);
    assert.match(text, /not enrolled/i, 'the details say why');
  });

  step('display name update and confirmed delete', async () => {
    await openFreshPage(context, page, base);
    await enroll(page, 'dave', 'Dave');
    await waitForStatus(page, /dave is enrolled on the ChromeCard\./);
    await startLogin(page, 'dave');
    await waitForStatus(page, /Logged in as dave\./);
    await waitForText(page.locator('#enrollment-summary'), /This is your enrollment\./);

    // Update the display name.
    await page.getByLabel('New display name').fill('Dave the Second');
    await page.getByRole('button', { name: 'Save display name' }).click();
    await waitForStatus(page, /Display name saved: Dave the Second\./);
    assert.equal(await page.locator('#enrollment-display-name').textContent(), 'Dave the Second');
    const status = JSON.parse((await httpsRequest(chain.proxyPort, 'GET', '/enroll/status?username=dave', chain.tls)).body);
    assert.equal(status.user.display_name, 'Dave the Second', 'the proxy stored the new name');

    // The first click opens a confirmation, and keeping the enrollment
    // changes nothing.
    await page.getByRole('button', { name: 'Delete my enrollment…' }).click();
    assert.equal(await page.locator('#delete-confirm').isVisible(), true, 'the confirmation shows');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'delete-cancelled', 'the safe choice has the focus');
    await screenshot(page, 'delete-confirmation');
    await page.getByRole('button', { name: 'Keep my enrollment' }).click();
    await waitForStatus(page, /Your enrollment was kept\./);
    const afterKeep = JSON.parse((await httpsRequest(chain.proxyPort, 'GET', '/enroll/status?username=dave', chain.tls)).body);
    assert.equal(afterKeep.enrolled, true, 'keeping does not delete');

    // Confirming deletes and logs out.
    await page.getByRole('button', { name: 'Delete my enrollment…' }).click();
    await page.getByRole('button', { name: 'Yes, delete my enrollment' }).click();
    await waitForStatus(page, /The enrollment of dave was deleted and you are logged out\. 1 session ended\./);
    assert.equal(await page.locator('#session-panel').isHidden(), true);
    assert.equal(await page.locator('#enrollment-summary').textContent(), 'dave is not enrolled.');
    const afterDelete = JSON.parse((await httpsRequest(chain.proxyPort, 'GET', '/enroll/status?username=dave', chain.tls)).body);
    assert.equal(afterDelete.enrolled, false, 'the proxy deleted the enrollment');
    await screenshot(page, 'deleted');
  });

  step('enrollment lookup without a session', async () => {
    await openFreshPage(context, page, base);
    await enroll(page, 'carol', 'Carol');
    await waitForStatus(page, /carol is enrolled on the ChromeCard\./);
    await page.getByLabel('Username to look up').fill('carol');
    await page.getByRole('button', { name: 'Show enrollment' }).click();
    await waitForStatus(page, /Showing the enrollment of carol\./);
    await waitForText(page.locator('#enrollment-summary'), /carol is enrolled\. Log in as carol to change or delete/);
    assert.equal(await page.locator('#enrollment-manage').isHidden(), true, 'no update or delete without a session');
  });

  step('card denial shows its message', async () => {
    base = await chain.startProxy('deny', { presence: 'deny' });
    await openFreshPage(context, page, base);

    await startLogin(page, 'carol');
    await waitForStatus(page, /^Login declined on the ChromeCard: the person at the card did not confirm, so you are not logged in\.$/);
    assert.equal(await page.locator('#session-panel').isHidden(), true);
    await screenshot(page, 'login-denied');

    await enroll(page, 'erin');
    await waitForStatus(page, /^Enrollment declined on the ChromeCard: the person at the card did not confirm, so erin is not enrolled\.$/);
  });

  step('cancel while awaiting presence', async () => {
    base = await chain.startProxy('never', { presence: 'never', confirmTimeoutS: NEVER_CONFIRM_TIMEOUT_S });
    await openFreshPage(context, page, base);

    await startLogin(page, 'carol');
    await page.locator('#card-prompt').waitFor({ state: 'visible' });
    assert.equal(await page.getByRole('heading', { name: 'Confirm on your ChromeCard' }).isVisible(), true);
    await waitForText(page.locator('#card-state'), /^waiting for confirmation on the card$/);
    await waitForStatus(page, /Confirm on your ChromeCard: the person at the card must press its button to approve the login of carol\./);
    assert.equal(await page.evaluate(() => document.activeElement.id), 'cancel-operation', 'Cancel has the focus');
    await screenshot(page, 'awaiting-presence');

    // Enter on the focused Cancel button.
    await page.keyboard.press('Enter');
    await waitForStatus(page, /^Login cancelled: the ChromeCard stopped waiting and you are not logged in\.$/);
    assert.equal(await page.locator('#card-prompt').isHidden(), true, 'the card prompt closes');
    assert.equal(await page.locator('#session-panel').isHidden(), true);
    await screenshot(page, 'cancelled');
  });

  step('card timeout shows its message', async () => {
    await openFreshPage(context, page, base);
    await startLogin(page, 'carol');
    await waitForText(page.locator('#card-state'), /^waiting for confirmation on the card$/);
    await waitForStatus(
      page,
      /^Nobody confirmed on the ChromeCard in time, so you are not logged in\. Start again and press the card's button when it asks\./,
      (NEVER_CONFIRM_TIMEOUT_S + 10) * 1000,
    );
    assert.equal(await page.locator('#card-prompt').isHidden(), true);
    await screenshot(page, 'timed-out');
  });

  step('card not connected shows its message', async () => {
    const cardPort = await freeUdpPort();
    const hostPort = await freeUdpPort();
    base = await chain.startProxy('no-card', {
      device: `udp:127.0.0.1:${cardPort}@127.0.0.1:${hostPort}`,
      store: 'proxy-store-no-card',
    });
    await openFreshPage(context, page, base);
    await enroll(page, 'frank');
    await waitForStatus(page, /^The ChromeCard is not connected, so frank is not enrolled\. Connect the card and try again\./, 30_000);
    await waitForText(page.locator('#card-health'), /ChromeCard: not connected/);
    await screenshot(page, 'card-not-connected');
  });

  step('page sent requests only to the proxy', async () => {
    const others = [...requestedHosts].filter((host) => !/^localhost:\d+$/.test(host));
    assert.deepEqual(others, [], 'requests to other hosts');
  });
});
