// A direct conversation: header with "Call", "Video call", "Verify" and "Set petname", the messages (shared message
// list), delivery marks, the offline notice, the request banner and the composer. Files come in
// through "Attach file", "Take photo", dropping them onto the conversation or pasting an image.

import { html, useMemo, useState } from '../vendor/preact-htm.js';
import { placeCall } from '../calls.js';
import { shortId } from '../format.js';
import { Composer } from '../components/composer.js';
import { InlineError, useAction } from '../components/form.js';
import { ViewHeader } from '../components/header.js';
import { go } from '../components/hooks.js';
import { IconEdit, IconPhone, IconShield, IconVideo } from '../components/icons.js';
import { MessageList } from '../components/messages.js';
import { Avatar } from '../components/rows.js';
import {
  accept,
  block,
  CALL_KEYS,
  conversationOf,
  displayName,
  filesOf,
  inCallNow,
  loadOlder,
  openDialog,
  petnameOf,
  sendMessage,
  threadOf,
  useSelect,
  useStore,
} from '../state.js';

const OUTGOING = new Set(['queued', 'delivered', 'read', 'failed']);

/** Accept or block someone who wrote to us first (also used by the requests view). */
export function TrustButtons({ peer, onDone }) {
  const { busy, error, run } = useAction();
  const decide = async (action) => {
    const r = await action(peer);
    if (onDone) onDone(r);
  };
  return html`<div class="trust-buttons">
    <button type="button" class="btn primary small" disabled=${busy} onClick=${() => run(() => decide(accept))}>
      Accept
    </button>
    <button type="button" class="btn danger small" disabled=${busy} onClick=${() => run(() => decide(block))}>
      Block
    </button>
    <${InlineError} error=${error} />
  </div>`;
}

function TrustBanner({ s, peer, trust }) {
  const name = displayName(s, peer);
  const { busy, error, run } = useAction();
  if (trust === 'request') {
    return html`<div class="banner" role="region" aria-label="Message request">
      <p><strong>${name}</strong> is not in your contacts. Accept to chat and send read receipts, or block them to refuse their messages.</p>
      <${TrustButtons} peer=${peer} onDone=${(r) => r.trust === 'blocked' && go('#/')} />
    </div>`;
  }
  if (trust === 'blocked') {
    return html`<div class="banner warn" role="region" aria-label="Blocked">
      <p>You blocked <strong>${name}</strong>. Their messages are refused.</p>
      <button type="button" class="btn small" disabled=${busy} onClick=${() => run(() => accept(peer))}>Unblock</button>
      <${InlineError} error=${error} />
    </div>`;
  }
  return null;
}

export function Conversation({ peer }) {
  const s = useStore({ except: CALL_KEYS });
  const inCall = useSelect(inCallNow);
  const thread = threadOf(s, 'chat', peer);
  const conv = conversationOf(s, peer);
  const name = displayName(s, peer);
  const pet = petnameOf(s, peer);
  const files = filesOf(s, peer);
  const [dropping, setDropping] = useState(false);

  const items = useMemo(
    () =>
      thread.messages.map((m) => {
        const outgoing = m.from === s.me || (m.from !== peer && OUTGOING.has(m.status));
        return {
          id: m.id,
          text: m.text,
          at: m.sent_at || m.received_at,
          outgoing,
          sender: outgoing ? 'You' : name,
          status: m.status,
          failure: m.failure,
          file: files[m.id] || null,
        };
      }),
    [thread.messages, files, s.me, name, peer],
  );

  const lastOwn = [...items].reverse().find((m) => m.outgoing);
  const queued = lastOwn && lastOwn.status === 'queued';

  const canSend = !conv || conv.trust !== 'blocked';
  const canCall = canSend && !inCall;
  const attach = (file) => openDialog('sendfile', { peer, file });
  const hasFiles = (e) => canSend && e.dataTransfer && [...(e.dataTransfer.types || [])].includes('Files');
  const onDragOver = (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = 'copy';
    if (!dropping) setDropping(true);
  };
  const onDragLeave = (e) => {
    if (!e.relatedTarget || !e.currentTarget.contains(e.relatedTarget)) setDropping(false);
  };
  const onDrop = (e) => {
    setDropping(false);
    if (!hasFiles(e)) return;
    e.preventDefault();
    const file = e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) attach(file);
  };
  const onPaste = (e) => {
    // Only an image on its own (a screenshot): copied text with pictures stays a paste of text.
    if (!canSend || !e.clipboardData || [...(e.clipboardData.types || [])].includes('text/plain')) return;
    const file = [...(e.clipboardData.files || [])].find((f) => /^image\//.test(f.type));
    if (!file) return;
    e.preventDefault();
    attach(file);
  };

  return html`<section
    class=${`view conversation${dropping ? ' dropping' : ''}`}
    aria-label=${`Conversation with ${name}`}
    onDragOver=${onDragOver}
    onDragLeave=${onDragLeave}
    onDrop=${onDrop}
    onPaste=${onPaste}
  >
    <${ViewHeader}
      title=${name}
      subtitle=${pet ? shortId(peer) : 'No petname yet'}
      avatar=${html`<${Avatar} title=${name} seed=${peer} />`}
    >
      <button type="button" class="btn ghost" disabled=${!canCall} onClick=${() => placeCall({ to: peer }, false)}>
        <${IconPhone} /><span>Call</span>
      </button>
      <button type="button" class="btn ghost" disabled=${!canCall} onClick=${() => placeCall({ to: peer }, true)}>
        <${IconVideo} /><span>Video call</span>
      </button>
      <button type="button" class="btn ghost" onClick=${() => openDialog('verify', { peer })}>
        <${IconShield} /><span>Verify</span>
      </button>
      <button type="button" class="btn ghost" onClick=${() => openDialog('petname', { peer })}>
        <${IconEdit} /><span>Set petname</span>
      </button>
    <//>
    ${conv && html`<${TrustBanner} s=${s} peer=${peer} trust=${conv.trust} />`}
    <${MessageList}
      key=${peer}
      items=${items}
      more=${thread.more}
      loading=${thread.older || !thread.loaded}
      onOlder=${() => loadOlder('chat', peer)}
      error=${thread.error}
      empty=${`No messages with ${name} yet. Say hello!`}
    />
    <div class="notice-live" aria-live="polite">
      ${queued && html`<p class="notice">Queued — will be delivered when ${name} comes online</p>`}
    </div>
    ${canSend &&
    html`<${Composer}
      key=${peer}
      onSend=${(text) => sendMessage('chat', peer, text)}
      onAttach=${attach}
      placeholder=${`Message ${name}`}
    />`}
  </section>`;
}
