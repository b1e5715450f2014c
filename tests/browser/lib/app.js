// How the tests find their way around the kith web app: only by roles and accessible names, as a
// person with a screen reader would. Every wait is bounded.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { poll } from './harness.js';

const require = createRequire(import.meta.url);

/** How long the UI may take to show something that is already known to the node. */
export const UI_TIMEOUT_MS = 10_000;
/** How long something sent over the network may take to show on the other side. */
export const ARRIVAL_TIMEOUT_MS = 60_000;

export const list = (page, name) => page.getByRole('list', { name, exact: true });
export const textbox = (page, name) => page.getByRole('textbox', { name, exact: true });
export const button = (page, name) => page.getByRole('button', { name, exact: true });
/** A link, button or tab with this name (navigation may be any of them). */
export const navControl = (page, name) =>
  page
    .getByRole('link', { name })
    .or(page.getByRole('button', { name }))
    .or(page.getByRole('tab', { name }));

/** Escapes a string for use in a RegExp. */
export const re = (s) => new RegExp(s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));

/** The listitems of list `listName` whose text contains `text` (string or RegExp). */
export const items = (page, listName, text) =>
  list(page, listName).getByRole('listitem').filter({ hasText: text });

/** Waits (bounded) until `locator` is visible; fails with `what`. */
export async function shows(locator, what, timeout = UI_TIMEOUT_MS) {
  try {
    await locator.first().waitFor({ state: 'visible', timeout });
  } catch (e) {
    throw new Error(`not shown within ${timeout} ms: ${what} (${e.message.split('\n')[0]})`);
  }
}

/**
 * The chat list screen is showing (phone: go Back from a conversation; else the "Chats" nav).
 * Its marker is the "New chat" button: an empty list "Chats" has no size and counts as hidden.
 */
export async function showChats(page) {
  const marker = button(page, 'New chat');
  if (await marker.isVisible()) return;
  const back = button(page, 'Back');
  if (await back.isVisible()) {
    await back.click();
  } else {
    const nav = navControl(page, /^chats$/i);
    if (await nav.first().isVisible()) await nav.first().click();
  }
  await shows(marker, 'the chat list screen (button "New chat")');
}

/**
 * Brings the requests into view (they are on the chat list screen, or behind a "Requests" nav
 * control) and returns the list "Requests". Does not wait for it: an empty list may be hidden.
 */
export async function showRequests(page) {
  const requests = list(page, 'Requests');
  if (await requests.isVisible()) return requests;
  await showChats(page);
  if (await requests.isVisible()) return requests;
  const nav = navControl(page, /^requests/i);
  if (await nav.first().isVisible()) await nav.first().click();
  return requests;
}

/** Clicks the chat (or group) whose link in list "Chats" contains `text`; waits for its "Message" box. */
export async function openChat(page, text, timeout = ARRIVAL_TIMEOUT_MS) {
  await showChats(page);
  // The link of a joined chat or group (an invitation row has a "Join" button and no link).
  const link = items(page, 'Chats', text).getByRole('link');
  await shows(link, `a chat or group containing ${text} in list "Chats"`, timeout);
  await link.first().click();
  await shows(textbox(page, 'Message'), `the conversation with ${text} (textbox "Message")`);
  await shows(list(page, 'Messages'), `list "Messages" of ${text}`);
}

/** Types `text` into "Message" and sends it with the "Send" button (or Enter). */
export async function sendMessage(page, text, { enter = false } = {}) {
  const box = textbox(page, 'Message');
  await box.fill(text);
  if (enter) await box.press('Enter');
  else await button(page, 'Send').click();
  // The box empties once the app took the message.
  await poll(`the "Message" box to empty after sending ${JSON.stringify(text)}`, UI_TIMEOUT_MS, async () => (await box.inputValue({ timeout: 1000 })) === '');
}

/** How many listitems of "Messages" contain `text`. */
export const countMessages = (page, text) => items(page, 'Messages', text).count();

/** Waits until exactly one listitem of "Messages" contains `text`; returns it. */
export async function waitForMessage(page, text, timeout = ARRIVAL_TIMEOUT_MS) {
  const item = items(page, 'Messages', text);
  await poll(`exactly one message ${JSON.stringify(text)} in list "Messages"`, timeout, async () => (await item.count()) === 1, 250);
  return item;
}

/** The status word of one of our own messages, as shown (visible text, aria-label or title). */
export async function statusOf(item) {
  return item.first().evaluate((el) => {
    const words = ['read', 'delivered', 'queued', 'failed', 'sending', 'sent'];
    const texts = [el.innerText || ''];
    for (const node of el.querySelectorAll('[aria-label], [title]')) {
      texts.push(node.getAttribute('aria-label') || '', node.getAttribute('title') || '');
    }
    texts.push(el.getAttribute('aria-label') || '', el.getAttribute('title') || '');
    const found = new Set();
    for (const t of texts) {
      for (const w of words) if (new RegExp(`\\b${w}\\b`, 'i').test(t)) found.add(w);
    }
    // The most advanced status wins when several words appear (e.g. "Delivered" tooltip on "Read").
    return words.find((w) => found.has(w)) ?? null;
  }, undefined, { timeout: 2000 });
}

/** Waits until the message item containing `text` shows status `want` (one of `want` if array). */
export async function waitForStatus(page, text, want, timeout = ARRIVAL_TIMEOUT_MS) {
  const wanted = Array.isArray(want) ? want : [want];
  const item = items(page, 'Messages', text);
  let last = null;
  try {
    await poll(`message ${JSON.stringify(text)} to show ${wanted.join(' or ')}`, timeout, async () => {
      last = await statusOf(item);
      return wanted.includes(last);
    }, 300);
  } catch (e) {
    throw new Error(`${e.message}; it shows ${JSON.stringify(last)}`);
  }
  return last;
}

/** Starts a chat by name or peer id: "New chat" → "Name or peer id" → "Start chat". */
export async function startChat(page, who) {
  await showChats(page);
  await button(page, 'New chat').click();
  await textbox(page, 'Name or peer id').fill(who);
  await button(page, 'Start chat').click();
  await shows(textbox(page, 'Message'), `the new conversation with ${who}`, ARRIVAL_TIMEOUT_MS);
}

/** The submit control of an open form/dialog named like `name` (the last match: the dialog's). */
async function submit(page, name) {
  const dialog = page.getByRole('dialog');
  const scope = (await dialog.count()) && (await dialog.first().isVisible()) ? dialog.first() : page;
  await scope.getByRole('button', { name }).last().click();
}

/** "New group" → "Group name" → "Create"; waits for the group's "Message" box. */
export async function createGroup(page, title) {
  await showChats(page);
  await button(page, 'New group').click();
  await textbox(page, 'Group name').fill(title);
  await button(page, 'Create').click();
  await shows(textbox(page, 'Message'), `the new group ${title}`);
}

/** In an open group: "Invite" → "Member" (or "Name or peer id") → "Send invite" (or "Invite"). */
export async function inviteToGroup(page, who) {
  await button(page, 'Invite').first().click();
  const box = page.getByRole('textbox', { name: /^(member|name or peer id)$/i });
  await shows(box, 'the invite form (textbox "Member")');
  await box.fill(who);
  await submit(page, /^(invite|add|send invite|send invitation)$/i);
  // The form closes (or empties) once the node took the invitation. (Short timeouts inside the
  // poll: a call on a dialog that just closed would otherwise wait Playwright's 30 s default.)
  await poll(`the invite form to close or empty after inviting ${who}`, ARRIVAL_TIMEOUT_MS, async () => {
    if (!(await box.isVisible())) return true;
    return (await box.inputValue({ timeout: 1000 })) === '';
  }, 300);
}

/** Opens the node panel through the "Node" nav control; waits until it shows `peerId`. */
export async function openNodePanel(page, peerId) {
  await navControl(page, /^node$/i).first().click();
  const field = page.getByRole('textbox', { name: 'Peer id', exact: true });
  await poll(`the node panel to show the peer id ${peerId}`, UI_TIMEOUT_MS, async () => {
    for (const el of await field.all()) if ((await el.isVisible()) && (await el.inputValue({ timeout: 1000 })) === peerId) return true;
    return false;
  });
}

// ---------------------------------------------------------------------------------------------
// Accessibility

const AXE_SOURCE = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

/**
 * Runs axe-core on the page as it is (injected through the DevTools protocol, which the page's
 * CSP does not govern) and returns the violations of impact serious or critical.
 */
export async function seriousViolations(page) {
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) {
    await page.evaluate(AXE_SOURCE);
  }
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      helpUrl: v.helpUrl,
      nodes: v.nodes.map((n) => ({ target: n.target.join(' '), html: n.html.slice(0, 160), summary: n.failureSummary })),
    }));
  });
  return result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
}

/** Readable lines for a failure message. */
export function describeViolations(view, violations) {
  const lines = [];
  for (const v of violations) {
    lines.push(`[${view}] ${v.impact}: ${v.id}: ${v.help} (${v.helpUrl})`);
    for (const n of v.nodes.slice(0, 5)) {
      lines.push(`    at ${n.target}: ${n.html}`);
      if (n.summary) lines.push(`      ${n.summary.replace(/\n/g, '\n      ')}`);
    }
    if (v.nodes.length > 5) lines.push(`    ... and ${v.nodes.length - 5} more`);
  }
  return lines.join('\n');
}

/** Asserts the page's URL no longer carries the token (the app swaps it for a cookie at once). */
export async function assertTokenGone(page) {
  await poll('the token to be removed from the URL', UI_TIMEOUT_MS, async () => !page.url().includes('token='));
  assert.ok(!page.url().includes('token='), page.url());
}
