// The chat page in a real headless Chromium against a real ringcast process,
// once per backend. Run: node --test tests/browser/  (RINGCAST_BIN selects the binary).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
  ARTIFACTS, BACKENDS, Server, freePort, launchBrowser, openChat, join, say,
  waitConnected, waitMembers, waitMessage,
} from './harness.mjs';

const TEST_TIMEOUT = 120000;

for (const backend of BACKENDS) {
  describe(`chat page, ${backend} backend`, { timeout: 6 * TEST_TIMEOUT }, () => {
    let server;
    let browser;

    before(async () => {
      server = await new Server(backend, await freePort()).start();
      browser = await launchBrowser();
    });

    after(async () => {
      if (browser) await browser.close();
      if (server) await server.kill();
    });

    test('two people chat in one room and see each other, the member count and join/leave notices', { timeout: TEST_TIMEOUT }, async () => {
      const room = `room-${backend}-1`;
      const alice = await openChat(browser.context, server);
      const bob = await openChat(browser.context, server);
      try {
        // The page is served whole: no other requests than itself and the socket.
        assert.equal(await alice.title(), 'ringcast chat');

        await join(alice, 'alice', room);
        await waitMembers(alice, 1);
        await join(bob, 'bob', room);
        await waitMembers(bob, 2);
        await waitMembers(alice, 2);
        assert.match(await alice.textContent('#members'), /2 members/);
        await alice.locator('#log li[data-kind="join"]', { hasText: 'bob joined' }).waitFor();
        assert.equal(await bob.textContent('#room-name'), room);

        await say(alice, 'hello from alice');
        await say(bob, 'hi alice, bob here');
        for (const page of [alice, bob]) {
          await waitMessage(page, 'alice', 'hello from alice');
          await waitMessage(page, 'bob', 'hi alice, bob here');
        }
        // The sender's own messages are marked as such.
        const mine = await waitMessage(alice, 'alice', 'hello from alice');
        assert.match(await mine.getAttribute('class'), /\bmine\b/);
        // The input is cleared after sending.
        assert.equal(await alice.inputValue('#text'), '');

        // Bob leaves: alice sees the notice and the count drop.
        await bob.click('#leave');
        await bob.locator('#join-view').waitFor({ state: 'visible' });
        await alice.locator('#log li[data-kind="leave"]', { hasText: 'bob left' }).waitFor();
        await waitMembers(alice, 1);

        for (const page of [alice, bob]) {
          assert.deepEqual(page.dialogs, []);
          assert.deepEqual(page.pageErrors, []);
        }
      } finally {
        await alice.close();
        await bob.close();
      }
    });

    test('pages reconnect with backoff after a server restart, rejoin and chat again', { timeout: TEST_TIMEOUT }, async () => {
      const room = `room-${backend}-restart`;
      const alice = await openChat(browser.context, server);
      const bob = await openChat(browser.context, server);
      try {
        await join(alice, 'alice', room);
        await join(bob, 'bob', room);
        await waitMembers(alice, 2);
        await waitMembers(bob, 2);
        await say(bob, 'before the restart');
        await waitMessage(alice, 'bob', 'before the restart');

        // Record every retry the pages schedule while the server is away.
        for (const page of [alice, bob]) {
          await page.evaluate(() => {
            window.__retries = [];
            new MutationObserver(() => {
              const d = document.body.dataset;
              window.__retries.push([Number(d.retryAttempt), Number(d.retryDelay)]);
            }).observe(document.body, { attributes: true, attributeFilter: ['data-retry-delay'] });
          });
        }

        // Crash the server; both pages notice and say so.
        await server.kill();
        for (const page of [alice, bob]) {
          await page.locator('#status[data-state="reconnecting"]').waitFor();
          await page.locator('#log li[data-kind="system"]', { hasText: 'Connection lost' }).waitFor();
          assert.equal(await page.isDisabled('#send'), true, 'send is disabled while disconnected');
        }
        // They keep retrying with growing, jittered delays: attempt n waits
        // between half and all of 250 ms * 2^n.
        for (const page of [alice, bob]) {
          await page.waitForFunction(() => window.__retries.length >= 3, null, { polling: 100 });
          const retries = await page.evaluate(() => window.__retries);
          retries.forEach(([attempt, delay], i) => {
            assert.equal(attempt, i, `retry ${i} used attempt ${attempt}: ${JSON.stringify(retries)}`);
            const step = Math.min(10000, 250 * 2 ** attempt);
            assert.ok(delay >= step / 2 - 1 && delay <= step + 1, `retry ${i} waited ${delay} ms, step ${step}`);
          });
        }

        // Same port, new process: the pages find it by themselves.
        server = await new Server(backend, server.port).start();
        for (const page of [alice, bob]) {
          await waitConnected(page);
          await page.locator('#log li[data-kind="self"]', { hasText: 'Reconnected' }).waitFor();
          await waitMembers(page, 2);
        }

        await say(alice, 'after the restart');
        await say(bob, 'still here');
        for (const page of [alice, bob]) {
          await waitMessage(page, 'alice', 'after the restart');
          await waitMessage(page, 'bob', 'still here');
          assert.deepEqual(page.dialogs, []);
          assert.deepEqual(page.pageErrors, []);
        }
      } finally {
        await alice.close();
        await bob.close();
      }
    });

    test('reconnect backoff is exponential with jitter and capped', { timeout: TEST_TIMEOUT }, async () => {
      const page = await openChat(browser.context, server);
      try {
        const table = await page.evaluate(() => {
          const { backoffDelay, BACKOFF_BASE_MS, BACKOFF_CAP_MS } = window.ringcastChat;
          const rows = [];
          for (let n = 0; n <= 40; n++) {
            rows.push([n, backoffDelay(n, 0), backoffDelay(n, 0.5), backoffDelay(n, 0.999999)]);
          }
          return { rows, base: BACKOFF_BASE_MS, cap: BACKOFF_CAP_MS };
        });
        assert.ok(table.base > 0 && table.cap >= table.base * 8, JSON.stringify(table));
        let prevLow = 0;
        for (const [n, low, mid, high] of table.rows) {
          const step = Math.min(table.cap, table.base * 2 ** n);
          assert.ok(low >= step / 2 && high <= step && low < mid && mid < high, `attempt ${n}: ${low} ${mid} ${high}`);
          assert.ok(low >= prevLow, 'delays must not shrink as attempts grow');
          assert.ok(high <= table.cap, 'delay above the cap');
          prevLow = low;
        }
        // Deep into an outage every client waits between cap/2 and cap.
        assert.equal(table.rows[40][1], table.cap / 2);
      } finally {
        await page.close();
      }
    });

    test('HTML in messages and names is shown as text, never run', { timeout: TEST_TIMEOUT }, async () => {
      const room = `room-${backend}-xss`;
      const mallory = await openChat(browser.context, server);
      const victim = await openChat(browser.context, server);
      try {
        const evilName = '<i>mallory</i>';
        await join(mallory, evilName, room);
        await join(victim, 'victim', room);
        await waitMembers(mallory, 2);

        const payloads = [
          '<img src=x onerror=alert(1)>',
          '<img src=x onerror="window.__pwned=1">',
          '<script>window.__pwned=2</script>',
          '<b>bold?</b> &amp; &lt;',
        ];
        for (const p of payloads) await say(mallory, p);
        for (const page of [victim, mallory]) {
          for (const p of payloads) await waitMessage(page, evilName, p);
        }
        for (const page of [victim, mallory]) {
          assert.equal(await page.locator('img').count(), 0, 'an <img> element was created');
          assert.equal(await page.locator('#log script, #log b, #log i').count(), 0, 'markup was parsed');
          assert.equal(await page.evaluate(() => window.__pwned), undefined, 'injected script ran');
          assert.deepEqual(page.dialogs, [], 'a dialog fired');
          assert.deepEqual(page.pageErrors, []);
        }
        // The literal text really is on screen.
        const shown = await victim.locator('#log .text', { hasText: '<img src=x onerror=alert(1)>' }).first().innerText();
        assert.equal(shown, '<img src=x onerror=alert(1)>');
      } finally {
        await mallory.close();
        await victim.close();
      }
    });

    test('error replies from the server are shown to the user', { timeout: TEST_TIMEOUT }, async () => {
      const room = `room-${backend}-errors`;
      const page = await openChat(browser.context, server);
      try {
        // A name longer than the server allows (chat-max-name, 64 bytes by
        // default): the join is refused and the form shows why.
        await page.evaluate(() => document.getElementById('name').removeAttribute('maxlength'));
        await page.fill('#name', 'n'.repeat(300));
        await page.fill('#room', room);
        await page.click('#join');
        await page.locator('#join-error').waitFor({ state: 'visible' });
        assert.ok((await page.textContent('#join-error')).trim().length > 0);
        assert.equal(await page.isVisible('#join-view'), true);

        // A message longer than chat-max-text: an error in the room view.
        await join(page, 'carol', room);
        await page.evaluate(() => document.getElementById('text').removeAttribute('maxlength'));
        await say(page, 'x'.repeat(5000));
        await page.locator('#error').waitFor({ state: 'visible' });
        assert.ok((await page.textContent('#error')).trim().length > 0);
        await page.locator('#log li[data-kind="error"]').waitFor();
        // Still connected and usable afterwards.
        await say(page, 'short one');
        await waitMessage(page, 'carol', 'short one');
        assert.deepEqual(page.pageErrors, []);
      } finally {
        await page.close();
      }
    });

    test('usable on a phone-sized screen', { timeout: TEST_TIMEOUT }, async () => {
      const room = `room-${backend}-phone`;
      const phone = await openChat(browser.context, server);
      const other = await openChat(browser.context, server);
      try {
        await phone.setViewportSize({ width: 390, height: 844 });
        const viewport = await phone.evaluate(() => document.querySelector('meta[name=viewport]').content);
        assert.match(viewport, /width=device-width/);

        await join(phone, 'pat', room);
        await join(other, 'sam', room);
        await waitMembers(phone, 2);
        for (let i = 1; i <= 25; i++) await say(other, `message number ${i} with some words to wrap on a narrow screen`);
        await say(phone, 'a reply from the phone');
        await waitMessage(phone, 'sam', 'message number 25 with some words to wrap on a narrow screen');
        await waitMessage(phone, 'pat', 'a reply from the phone');

        // Nothing wider than the screen, and the controls are on it.
        const scrollWidth = await phone.evaluate(() => document.documentElement.scrollWidth);
        assert.ok(scrollWidth <= 390, `page is ${scrollWidth}px wide on a 390px screen`);
        for (const sel of ['#text', '#send', '#leave', '#members', '#status']) {
          const box = await phone.locator(sel).boundingBox();
          assert.ok(box, `${sel} not rendered`);
          assert.ok(box.x >= 0 && box.y >= 0 && box.x + box.width <= 390 && box.y + box.height <= 844,
            `${sel} is off screen: ${JSON.stringify(box)}`);
        }
        // The log scrolls to the newest message.
        const last = phone.locator('#log li[data-kind="message"]').last();
        const lastBox = await last.boundingBox();
        const logBox = await phone.locator('#log').boundingBox();
        assert.ok(lastBox.y + lastBox.height <= logBox.y + logBox.height + 1, 'newest message is not in view');

        await phone.screenshot({ path: path.join(ARTIFACTS, `chat-phone-${backend}.png`) });
        await phone.click('#leave');
        await phone.screenshot({ path: path.join(ARTIFACTS, `join-phone-${backend}.png`) });
      } finally {
        await phone.close();
        await other.close();
      }
    });
  });
}
