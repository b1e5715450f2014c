// Photos and files in the web app: two real `kith run` nodes, Alice on a desktop browser and Bob
// on a phone. Bob accepts Alice; Alice attaches a PNG made in the test, picks "sepia" (previewed
// through the page's SVG filter), types a caption and sends; Bob sees the thumbnail, then
// "Download" once the photo has arrived, and still sees both after a reload. Alice's node serves
// files slowly (500 kB/s), so Bob can cancel a larger one with "Cancel" while it arrives.
//
// The tests run in order and build on each other; a test whose precondition failed is skipped.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import {
  Lab,
  launchBrowser,
  desktopContext,
  phoneContext,
  openSignedIn,
  rawRequest,
  skipReason,
  screenshot,
  poll,
  suiteSteps,
} from '../lib/harness.js';
import {
  ARRIVAL_TIMEOUT_MS,
  UI_TIMEOUT_MS,
  button,
  describeViolations,
  items,
  openChat,
  sendMessage,
  seriousViolations,
  showRequests,
  shows,
  startChat,
  textbox,
  waitForMessage,
} from '../lib/app.js';

const HELLO = 'Hello bob, a photo follows';
const CAPTION = 'Sunset over the lake';
const PHOTO = 'lake.png';

describe('kith web app: photos and files', { skip: skipReason() }, () => {
  let lab, browser;
  let A, B; // nodes
  let pageA; // desktop, node A (Alice)
  let pageB; // phone, node B (Bob)
  let photoPath;
  const done = {};

  /** Test bodies that add screenshots and page logs to a failure, and skip after a failed step. */
  const { step, needs } = suiteSteps({ prefix: 'files-', done, lab: () => lab, pages: () => [['A-desktop', pageA], ['B-phone', pageB]] });
  const bearer = (node) => ({ Authorization: `Bearer ${node.token}` });
  /** The message of list "Messages" that shows the photo's caption. */
  const photoItem = (page) => items(page, 'Messages', CAPTION);

  before(async () => {
    lab = new Lab('kith-browser-files-');
    try {
      A = await lab.start('a', { args: ['--file-upload-rate', '500000'] });
      B = await lab.start('b', { bootstrap: [A.tcpAddr()] });
      browser = await launchBrowser();
      // Neither registers a name here (messenger.test.js covers that): skip the first-run view.
      const skipFirstRun = () => localStorage.setItem('kith.firstRunSkipped', '1');
      const desktop = await desktopContext(browser);
      const phone = await phoneContext(browser);
      for (const ctx of [desktop, phone]) await ctx.addInitScript(skipFirstRun);
      await Promise.all([A, B].map((n) => n.waitForRouting(1)));
      pageA = await openSignedIn(desktop, A);
      pageB = await openSignedIn(phone, B);
      photoPath = path.join(lab.dir, PHOTO);
    } catch (e) {
      lab.failed = true;
      throw e;
    }
  });

  after(async () => {
    for (const [who, page] of [['A', pageA], ['B', pageB]]) {
      if (page?.problems?.length) console.error(`${who} page problems:\n  ${page.problems.join('\n  ')}`);
    }
    await browser?.close().catch(() => {});
    await lab?.cleanup();
  });

  it('1. Alice writes to Bob by peer id; Bob accepts her request', step('accept', async () => {
    await startChat(pageA, B.peerId);
    await sendMessage(pageA, HELLO);
    await waitForMessage(pageA, HELLO, UI_TIMEOUT_MS);

    const requests = await showRequests(pageB);
    const request = requests.getByRole('listitem').filter({ hasText: HELLO });
    await shows(request, `Alice's message in Bob's list "Requests"`, ARRIVAL_TIMEOUT_MS);
    await request.first().getByRole('button', { name: /^accept/i }).click();
    await openChat(pageB, HELLO);
    await waitForMessage(pageB, HELLO, UI_TIMEOUT_MS);
    done.accepted = true;
  }));

  it('2. "Attach file" opens "Send file" with a filter preview through the SVG filter; axe finds nothing serious', step('dialog', async (t) => {
    if (!needs(t, 'accepted')) return;
    // A 320×200 PNG drawn on a canvas in the page (a gradient, so a filter visibly changes it).
    const dataUrl = await pageA.evaluate(() => {
      const c = document.createElement('canvas');
      c.width = 320;
      c.height = 200;
      const g = c.getContext('2d');
      const grad = g.createLinearGradient(0, 0, 320, 200);
      grad.addColorStop(0, '#1e40af');
      grad.addColorStop(0.5, '#f59e0b');
      grad.addColorStop(1, '#10b981');
      g.fillStyle = grad;
      g.fillRect(0, 0, 320, 200);
      g.fillStyle = '#ffffff';
      g.fillRect(40, 40, 60, 60);
      return c.toDataURL('image/png');
    });
    fs.writeFileSync(photoPath, Buffer.from(dataUrl.split(',')[1], 'base64'));

    const filters = await rawRequest(A, { path: '/v1/filters', headers: bearer(A) });
    assert.equal(filters.status, 200, filters.text);
    const sepia = filters.json.find((f) => f.name === 'sepia');
    assert.ok(sepia, `GET /v1/filters has sepia: ${filters.text}`);

    // Dropping a file onto the conversation and pasting an image open the same dialog.
    for (const how of ['drop', 'paste']) {
      await pageA.evaluate(({ how, url }) => {
        // (Not fetch(url): the page's CSP allows no data: connections.)
        const blob = new Blob([Uint8Array.from(atob(url.split(',')[1]), (c) => c.charCodeAt(0))], { type: 'image/png' });
        const dt = new DataTransfer();
        dt.items.add(new File([blob], `${how}.png`, { type: 'image/png' }));
        if (how === 'drop') {
          const section = document.querySelector('section.conversation');
          section.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
          section.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
        } else {
          document.querySelector('section.conversation textarea').dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
        }
      }, { how, url: dataUrl });
      const opened = pageA.getByRole('dialog', { name: 'Send file' });
      await shows(opened.getByText(`${how}.png`), `"Send file" with ${how}.png after a ${how}`);
      await opened.getByRole('button', { name: 'Cancel', exact: true }).click();
      await poll(`"Send file" to close on Cancel (${how})`, UI_TIMEOUT_MS, async () => !(await opened.isVisible()));
    }

    const [chooser] = await Promise.all([
      pageA.waitForEvent('filechooser', { timeout: UI_TIMEOUT_MS }),
      button(pageA, 'Attach file').click(),
    ]);
    await chooser.setFiles(photoPath);
    const dialog = pageA.getByRole('dialog', { name: 'Send file' });
    await shows(dialog, 'the "Send file" dialog after choosing a file');
    await shows(dialog.getByText(PHOTO), 'the file name in "Send file"');
    await shows(dialog.getByRole('radio', { name: 'None', exact: true }), 'the filter choice "None"');

    await dialog.getByRole('radio', { name: sepia.label, exact: true }).check();
    // The preview refers to the page's one SVG filter for sepia, which carries the node's matrix.
    const preview = await poll('the preview to use the sepia SVG filter', UI_TIMEOUT_MS, async () => {
      const p = await pageA.evaluate(() => {
        const img = document.querySelector('dialog[open] .preview img');
        if (!img) return null;
        const css = getComputedStyle(img).filter;
        const m = /url\("?#([^")]+)"?\)/.exec(css);
        const f = m && document.getElementById(m[1]);
        const fe = f && f.querySelector('feColorMatrix');
        return {
          css,
          tag: f ? f.tagName : '',
          space: f ? f.getAttribute('color-interpolation-filters') : '',
          type: fe ? fe.getAttribute('type') : '',
          values: fe ? fe.getAttribute('values') : '',
          loaded: img.complete && img.naturalWidth > 0,
          filterCount: document.querySelectorAll('svg filter#' + CSS.escape(m ? m[1] : 'x')).length,
        };
      });
      return p && p.tag === 'filter' && p.loaded ? p : null;
    });
    assert.equal(preview.space, 'sRGB', JSON.stringify(preview));
    assert.equal(preview.type, 'matrix', JSON.stringify(preview));
    assert.equal(preview.filterCount, 1, 'the filter is defined once');
    assert.deepEqual(preview.values.trim().split(/\s+/).map(Number), sepia.matrix, 'the preview uses the node\'s matrix');

    await textbox(dialog, 'Caption').fill(CAPTION);
    await dialog.getByRole('checkbox', { name: 'Send original' }).waitFor({ state: 'visible', timeout: UI_TIMEOUT_MS });
    await screenshot(pageA, 'files-send-dialog-desktop');

    const violations = await seriousViolations(pageA);
    assert.equal(violations.length, 0, describeViolations('Send file dialog', violations));
    done.dialog = true;
  }));

  it('3. Send uploads the photo; Bob sees the thumbnail, then "Download"; both survive a reload', step('send', async (t) => {
    if (!needs(t, 'dialog')) return;
    const dialog = pageA.getByRole('dialog', { name: 'Send file' });
    await dialog.getByRole('button', { name: 'Send', exact: true }).click();
    // The dialog closes once the node took the file, or shows the node's error in words.
    const alert = dialog.getByRole('alert');
    const outcome = await poll('the "Send file" dialog to close after Send', ARRIVAL_TIMEOUT_MS, async () => {
      if (!(await dialog.isVisible())) return { sent: true };
      if (await alert.isVisible()) return { error: await alert.innerText({ timeout: 1000 }) };
      return false;
    }, 250);
    assert.ok(outcome.sent, `"Send file" says: ${outcome.error}`);

    // Alice's own message: the thumbnail with its caption.
    const mine = photoItem(pageA);
    await shows(mine, `Alice's photo message "${CAPTION}"`);
    await shows(mine.locator('img[alt^="Photo:"]'), 'the thumbnail in Alice\'s message');

    // Bob: the thumbnail (with its size set, no layout shift), then "Download" once it is here.
    const theirs = photoItem(pageB);
    await shows(theirs, `Alice's photo message "${CAPTION}" on Bob's page`, ARRIVAL_TIMEOUT_MS);
    const thumb = theirs.locator('img[alt^="Photo:"]');
    await shows(thumb, 'the thumbnail (img alt "Photo: …") on Bob\'s page', ARRIVAL_TIMEOUT_MS);
    const download = theirs.getByRole('link', { name: 'Download', exact: true });
    await shows(download, '"Download" on Bob\'s page once the photo arrived', ARRIVAL_TIMEOUT_MS);
    const info = await thumb.first().evaluate((img) => ({
      alt: img.alt,
      width: img.getAttribute('width'),
      height: img.getAttribute('height'),
      loaded: img.complete && img.naturalWidth > 0,
    }));
    assert.ok(Number(info.width) > 0 && Number(info.height) > 0, `the thumbnail has width and height: ${JSON.stringify(info)}`);
    const href = await download.first().getAttribute('href');
    const name = await download.first().getAttribute('download');
    assert.match(href, /^\/v1\/files\/[^/]+\/content$/, href);
    assert.ok(name, 'the link has a download name');
    // The content is served to the page (cookie, same origin) as an image.
    const got = await pageB.evaluate(async (url) => {
      const r = await fetch(url);
      return { status: r.status, type: r.headers.get('content-type'), size: (await r.arrayBuffer()).byteLength };
    }, href);
    assert.equal(got.status, 200, JSON.stringify(got));
    assert.match(got.type || '', /^image\//, JSON.stringify(got));
    assert.ok(got.size > 0, JSON.stringify(got));
    await screenshot(pageB, 'files-received-phone');

    // Everything comes from the node: after a reload the photo is still there.
    await pageB.reload({ waitUntil: 'domcontentloaded' });
    await shows(photoItem(pageB).locator('img[alt^="Photo:"]'), 'the thumbnail after reloading Bob\'s page');
    await shows(photoItem(pageB).getByRole('link', { name: 'Download', exact: true }), '"Download" after reloading Bob\'s page');

    // The thumbnail opens the full photo.
    await photoItem(pageB).getByRole('button').filter({ has: pageB.locator('img[alt^="Photo:"]') }).first().click();
    const full = pageB.getByRole('dialog');
    await shows(full, 'the full view of the photo');
    await poll('the full photo to load', UI_TIMEOUT_MS, async () =>
      full.locator('img[alt^="Photo:"]').first().evaluate((img) => img.complete && img.naturalWidth > 0),
    );
    await pageB.keyboard.press('Escape');
    done.sent = true;
  }));

  it('4. Bob cancels a file while it arrives: "Cancel" beside its progress, then "Cancelled"', step('cancel', async (t) => {
    if (!needs(t, 'accepted')) return;
    const ARCHIVE = 'A big archive, cancelled';
    const bigPath = path.join(lab.dir, 'archive.bin');
    fs.writeFileSync(bigPath, crypto.randomBytes(6_000_000));
    const sent = await A.json(['send-file', B.peerId, bigPath, '--caption', ARCHIVE]);
    const item = items(pageB, 'Messages', ARCHIVE);
    await shows(item.getByText(/^Receiving \d+%/), `"Receiving N%" on Bob's page for "${ARCHIVE}"`, ARRIVAL_TIMEOUT_MS);
    const cancel = item.getByRole('button', { name: 'Cancel', exact: true });
    await shows(cancel, '"Cancel" beside the progress');
    await cancel.click();
    await shows(item.getByText('Cancelled', { exact: true }), '"Cancelled" once the node stopped the file');
    assert.equal(await cancel.count(), 0, 'no "Cancel" on a cancelled file');
    const listed = await B.json(['files']);
    const entry = listed.find((f) => f.file_id === sent.file_id);
    assert.equal(entry?.state, 'cancelled', JSON.stringify(entry));
    assert.equal(entry.received_bytes, 0, JSON.stringify(entry));
    // Still cancelled after a reload: the state is the node's.
    await pageB.reload({ waitUntil: 'domcontentloaded' });
    await shows(items(pageB, 'Messages', ARCHIVE).getByText('Cancelled', { exact: true }), '"Cancelled" after reloading Bob\'s page');
  }));

  it('5. the pages threw no uncaught errors and broke no CSP rule', step('console', async (t) => {
    if (!needs(t, 'accepted')) return;
    for (const [who, page] of [['A', pageA], ['B', pageB]]) {
      const bad = (page.problems || []).filter((p) => p.startsWith('pageerror:') || /Content Security Policy|Refused to/i.test(p));
      assert.equal(bad.length, 0, `${who}: ${bad.join(' | ')}`);
    }
  }));
});
