// List rows: chats, groups, requests, invitations and members all use Row.

import { html } from '../vendor/preact-htm.js';
import { fullTime, isoTime, relativeTime } from '../format.js';

function hash(s) {
  let h = 0;
  for (let i = 0; i < s.length; i += 1) h = (h * 31 + s.charCodeAt(i)) | 0;
  return Math.abs(h);
}

function initials(title) {
  // A shortened peer id ("12D3…x7Yz9QwE"): its tail is what tells peers apart.
  const tail = title.split('…')[1];
  if (tail) return tail.slice(0, 2).toUpperCase();
  const words = title.replace(/[…@#]/g, ' ').trim().split(/[\s_\-.]+/).filter(Boolean);
  if (!words.length) return '?';
  const first = [...words[0]][0] || '?';
  const second = words.length > 1 ? [...words[1]][0] || '' : '';
  return (first + second).toUpperCase();
}

/** A coloured circle with initials (decorative). `seed` picks the colour (a peer or group id). */
export function Avatar({ title, seed, group = false, size = '' }) {
  const cls = `avatar av${hash(seed || title) % 8}${group ? ' group' : ''}${size ? ` ${size}` : ''}`;
  return html`<span class=${cls} aria-hidden="true">${initials(title || '?')}</span>`;
}

/** A relative time ("now", "5 min", "Tue") with the full date on hover. */
export function RelTime({ ms, now }) {
  if (!ms) return null;
  return html`<time class="reltime" datetime=${isoTime(ms)} title=${fullTime(ms)}>${relativeTime(ms, now)}</time>`;
}

/** An unread count; its accessible name is e.g. "3 unread". */
export function Badge({ count, label = 'unread' }) {
  if (!count) return null;
  return html`<span class="badge" role="img" aria-label=${`${count} ${label}`}>${count > 99 ? '99+' : count}</span>`;
}

/**
 * One list row: avatar, title, a line of text, time and badge. With `href` the main part is a
 * link; `actions` are buttons after it.
 */
export function Row({ invitation = false, stacked = false, href, title, text, at, now, unread = 0, seed, group = false, active = false, actions = null, note = null }) {
  const body = html`<${Avatar} title=${title} seed=${seed} group=${group} />
    <span class="row-main">
      <span class="row-top">
        <span class="row-title">${title}</span>
        <${RelTime} ms=${at} now=${now} />
      </span>
      <span class="row-bottom">
        <span class="row-text">${text}</span>
        <${Badge} count=${unread} />
      </span>
      ${note && html`<span class="row-note">${note}</span>`}
    </span>`;
  return html`<li class=${`row${active ? ' active' : ''}${unread ? ' unread' : ''}${invitation ? ' invitation' : ''}${stacked ? ' stacked' : ''}`}>
    ${href
      ? html`<a class="row-link" href=${href} aria-current=${active ? 'page' : undefined}>${body}</a>`
      : html`<div class="row-link static">${body}</div>`}
    ${actions && html`<div class="row-actions">${actions}</div>`}
  </li>`;
}
