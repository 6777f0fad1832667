// Shared helpers for the browser tests: start/stop a real ringcast process on
// a free loopback port, and launch Debian's Chromium through playwright-core.
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, createWriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '..', '..');
export const BIN = process.env.RINGCAST_BIN || path.join(ROOT, 'target', 'debug', 'ringcast');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const ARTIFACTS = path.join(ROOT, 'target', 'browser');
/** Backends to run the suite against (both by default, like the pytest suite). */
export const BACKENDS = (process.env.RINGCAST_BACKENDS || 'epoll io-uring').split(/\s+/).filter(Boolean);

mkdirSync(ARTIFACTS, { recursive: true });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A TCP port nobody listens on right now (the kernel picks it). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => { s.destroy(); resolve(false); });
  });
}

let serial = 0;

/** One ringcast process. Its output goes to target/browser/<name>.log. */
export class Server {
  constructor(backend, port, extraArgs = []) {
    this.backend = backend;
    this.port = port;
    this.args = ['--listen', `127.0.0.1:${port}`, '--backend', backend, ...extraArgs];
    this.logPath = path.join(ARTIFACTS, `ringcast-${backend}-${process.pid}-${serial++}.log`);
    this.proc = null;
    this.exited = null;
  }

  get url() {
    return `http://127.0.0.1:${this.port}/`;
  }

  /** Spawns the process and waits until the port accepts connections. */
  async start(timeoutMs = 20000) {
    const log = createWriteStream(this.logPath);
    const proc = spawn(BIN, this.args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_BACKTRACE: '1' },
    });
    proc.stdout.pipe(log);
    proc.stderr.pipe(log);
    this.proc = proc;
    this.exited = new Promise((resolve) => proc.once('exit', (code, sig) => resolve({ code, sig })));
    const deadline = Date.now() + timeoutMs;
    let exitInfo = null;
    this.exited.then((e) => { exitInfo = e; });
    while (Date.now() < deadline) {
      if (exitInfo) {
        throw new Error(`ringcast exited early (${JSON.stringify(exitInfo)}); see ${this.logPath}`);
      }
      if (await canConnect(this.port)) return this;
      await sleep(50);
    }
    throw new Error(`ringcast did not listen on ${this.port} within ${timeoutMs} ms; see ${this.logPath}`);
  }

  /** SIGKILL (a crash, as far as clients can tell) and wait for the exit. */
  async kill() {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGKILL');
    }
    if (this.exited) await this.exited;
  }
}

/** Starts ringcast on a fresh port. */
export async function startServer(backend, extraArgs = []) {
  const server = new Server(backend, await freePort(), extraArgs);
  return server.start();
}

/**
 * Debian's Chromium, headless, with a fresh profile directory. Returns the
 * (persistent) browser context and a close() that also removes the profile.
 */
export async function launchBrowser() {
  const userDataDir = mkdtempSync(path.join(tmpdir(), 'ringcast-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1024, height: 768 },
  });
  // Generous: a loaded 2-core CI machine runs a debug server and Chromium.
  context.setDefaultTimeout(30000);
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Opens the chat page in a new tab and records dialogs (alert() etc.) and
 * page errors so tests can assert there were none.
 */
export async function openChat(context, server) {
  const page = await context.newPage();
  page.dialogs = [];
  page.pageErrors = [];
  page.on('dialog', (d) => { page.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  page.on('pageerror', (e) => page.pageErrors.push(String(e)));
  // A CSP violation means the page's own inline script/style hashes are stale
  // or something tried to inject content: either way a bug.
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) page.pageErrors.push(m.text());
  });
  await page.goto(server.url);
  await waitConnected(page);
  return page;
}

export async function waitConnected(page) {
  await page.locator('#status[data-state="connected"]').waitFor();
}

/** Fills the join form and waits for the server's own join notice. */
export async function join(page, name, room) {
  await page.bringToFront();
  await page.fill('#name', name);
  await page.fill('#room', room);
  await page.click('#join');
  await page.locator('#chat-view').waitFor({ state: 'visible' });
  await page.locator('#log li[data-kind="self"]').last().waitFor();
}

export async function say(page, text) {
  // Background tabs get throttled timers and animation frames, which makes
  // Playwright's actionability checks slow; act on the front tab.
  await page.bringToFront();
  await page.fill('#text', text);
  await page.click('#send');
}

/** Waits until the page shows `count` members. */
export async function waitMembers(page, count) {
  await page.waitForFunction(
    (n) => document.getElementById('members').dataset.count === String(n),
    count,
    { polling: 100 },
  );
}

/** Waits for a chat message from `name` whose text is exactly `text`; returns its <li>. */
export async function waitMessage(page, name, text) {
  const handle = await page.waitForFunction(
    ([n, t]) => {
      for (const li of document.querySelectorAll('#log li[data-kind="message"]')) {
        if (li.querySelector('.who').textContent === n && li.querySelector('.text').textContent === t) {
          return li;
        }
      }
      return null;
    },
    [name, text],
    // Interval polling: requestAnimationFrame (the default) is throttled in
    // background tabs, and most tests have two tabs.
    { polling: 100 },
  );
  return handle.asElement();
}
