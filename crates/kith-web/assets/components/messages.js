// The message list shared by direct and group conversations: oldest at the top, infinite scroll
// upward (keeps the reading position while older pages load), follows new messages while at the
// bottom and otherwise offers a "new messages" button. Text is always rendered as text.

import { html, useEffect, useLayoutEffect, useRef, useState } from '../vendor/preact-htm.js';
import { dayHeading, fullTime, isoTime, isSameDay, plural, timeOfDay } from '../format.js';
import { FileBody } from './files.js';
import { IconAlert, IconCheck, IconChecks, IconClock, IconDown, IconPhone } from './icons.js';

const MARKS = {
  queued: { icon: IconClock, text: 'Queued' },
  delivered: { icon: IconCheck, text: 'Delivered' },
  read: { icon: IconChecks, text: 'Read' },
  failed: { icon: IconAlert, text: 'Not delivered' },
};

/** The delivery mark of one of our messages: an icon plus words for screen readers. */
export function StatusMark({ status, failure }) {
  const mark = MARKS[status];
  if (!mark) return null;
  const Icon = mark.icon;
  const words = status === 'failed' && failure ? `${mark.text}: ${failure}` : mark.text;
  return html`<span class=${`mark mark-${status}`} title=${words}>
    <${Icon} />
    ${status === 'failed' ? html`<span>${words}</span>` : html`<span class="sr-only">${words}</span>`}
  </span>`;
}

/** The texts the node writes into a conversation when a call ends ("missed call", "video call, 12 s"). */
const CALL_TEXT = /^(missed (video )?call|declined|(video )?call(, .+| failed))$/i;

const NEAR_TOP = 240;
const NEAR_BOTTOM = 80;

/**
 * `items`: [{ id, text, at, outgoing, sender, status?, failure?, file? }] oldest first; `file` is
 * the GET /v1/files entry of a message that carried a file (its text is the caption or name).
 * `showSender`: print the sender above incoming messages (groups).
 */
export function MessageList({ items, more, loading, onOlder, showSender = false, empty = 'No messages yet.', error = '' }) {
  const scroller = useRef(null);
  const atBottom = useRef(true);
  const anchor = useRef(null);
  const prev = useRef({ first: null, last: null });
  const [unseen, setUnseen] = useState(0);
  const olderFocused = useRef(false);

  const loadOlder = () => {
    const el = scroller.current;
    if (!el || !more || loading || anchor.current) return;
    anchor.current = { height: el.scrollHeight, top: el.scrollTop };
    // If nothing older came in, the anchor must not stay behind and block the next load.
    Promise.resolve(onOlder()).finally(() => requestAnimationFrame(() => (anchor.current = null)));
  };

  const toBottom = () => {
    const el = scroller.current;
    if (!el) return;
    el.scrollTop = el.scrollHeight;
    atBottom.current = true;
    setUnseen(0);
  };

  const onScroll = () => {
    const el = scroller.current;
    atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < NEAR_BOTTOM;
    if (atBottom.current && unseen) setUnseen(0);
    if (el.scrollTop < NEAR_TOP) loadOlder();
  };

  useLayoutEffect(() => {
    const el = scroller.current;
    if (!el) return;
    const first = items.length ? items[0].id : null;
    const last = items.length ? items[items.length - 1].id : null;
    const p = prev.current;
    if (anchor.current && first !== p.first) {
      // Older messages went in above: keep what the reader was looking at in place.
      el.scrollTop = el.scrollHeight - anchor.current.height + anchor.current.top;
      anchor.current = null;
    } else if (last !== p.last) {
      const newest = items[items.length - 1];
      if (!p.last || atBottom.current || (newest && newest.outgoing)) {
        el.scrollTop = el.scrollHeight;
        atBottom.current = true;
        setUnseen(0);
      } else {
        const before = items.findIndex((m) => m.id === p.last);
        const added = items.slice(before + 1).filter((m) => !m.outgoing).length;
        if (added) setUnseen((n) => n + added);
      }
    }
    prev.current = { first, last };
  }, [items]);

  // The "Load older messages" button goes away with the last page: keep the focus nearby.
  useLayoutEffect(() => {
    if (!more && olderFocused.current) {
      olderFocused.current = false;
      if (scroller.current) scroller.current.focus({ preventScroll: true });
    }
  }, [more]);

  useEffect(() => {
    if (!loading) anchor.current = null;
    // Not enough messages to scroll yet: keep loading older ones until the list fills the pane.
    const el = scroller.current;
    if (el && more && !loading && el.scrollHeight <= el.clientHeight + NEAR_TOP) loadOlder();
  }, [loading, more, items]);

  useEffect(() => {
    const el = scroller.current;
    if (!el || typeof ResizeObserver === 'undefined') return undefined;
    const ro = new ResizeObserver(() => {
      if (atBottom.current) el.scrollTop = el.scrollHeight;
    });
    ro.observe(el);
    return () => ro.disconnect();
  }, []);

  return html`<div class="messages-wrap">
    <div class="messages-scroll" ref=${scroller} onScroll=${onScroll} tabindex="0" role="region" aria-label="Message history">
      ${more &&
      html`<div class="older">
        <button
          type="button"
          class="btn ghost small"
          onClick=${loadOlder}
          onFocus=${() => (olderFocused.current = true)}
          onBlur=${() => (olderFocused.current = false)}
          aria-disabled=${loading ? 'true' : undefined}
        >
          ${loading ? 'Loading older messages…' : 'Load older messages'}
        </button>
      </div>`}
      ${!items.length && !loading && html`<p class="empty">${error || empty}</p>`}
      <ol class="messages" aria-label="Messages">
        ${items.map((m, i) => html`<${Message} key=${m.id} m=${m} prev=${items[i - 1]} showSender=${showSender} />`)}
      </ol>
    </div>
    <div class="jump-live" aria-live="polite">
      ${unseen > 0 &&
      html`<button type="button" class="btn jump" onClick=${toBottom}>
        <${IconDown} />${plural(unseen, 'new message')}
      </button>`}
    </div>
  </div>`;
}

function Message({ m, prev, showSender }) {
  const newDay = !prev || !isSameDay(prev.at, m.at);
  const sameSender = prev && !newDay && prev.sender === m.sender && prev.outgoing === m.outgoing && m.at - prev.at < 300000;
  const cls = `msg ${m.outgoing ? 'out' : 'in'}${sameSender ? ' cont' : ''}${m.status === 'failed' ? ' failed' : ''}${m.file ? ' has-file' : ''}`;
  return html`<li class=${cls}>
    ${newDay && html`<p class="day"><span>${dayHeading(m.at)}</span></p>`}
    <div class="bubble">
      ${showSender && !m.outgoing && !sameSender
        ? html`<p class="sender">${m.sender}</p>`
        : html`<span class="sr-only">${m.sender}: </span>`}
      ${m.file && html`<${FileBody} key=${m.file.state} f=${m.file} />`}
      ${m.file
        ? m.file.caption && html`<p class="text">${m.file.caption}</p>`
        : CALL_TEXT.test(m.text || '')
          ? html`<p class="text call-text"><${IconPhone} />${m.text}</p>`
          : html`<p class="text">${m.text}</p>`}
      <p class="meta">
        <time datetime=${isoTime(m.at)} title=${fullTime(m.at)}>${timeOfDay(m.at)}</time>
        ${m.outgoing && html`<${StatusMark} status=${m.status} failure=${m.failure} />`}
      </p>
    </div>
  </li>`;
}
