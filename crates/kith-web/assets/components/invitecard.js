// Our invite: the link, its QR code and our peer id, each easy to copy. Used by the first-run
// screen and the "Your invite" view.

import { html, useEffect } from '../vendor/preact-htm.js';
import { CALL_KEYS, inviteQrUrl, loadInvite, useStore } from '../state.js';
import { CopyField } from './copy.js';

export function InviteCard({ compact = false }) {
  const s = useStore({ except: CALL_KEYS });
  useEffect(() => {
    loadInvite();
  }, []);
  const inv = s.invite;
  if (!inv) return html`<p class="muted" role="status">Loading your invite…</p>`;
  return html`<div class=${`invite-card${compact ? ' compact' : ''}`}>
    <figure class="qr">
      <img src=${`${inviteQrUrl}?v=${encodeURIComponent(inv.url.length + (inv.name || ''))}`} alt="QR code of your invite link" width="200" height="200" />
      <figcaption>Let a friend scan this with their phone, or send them the link.</figcaption>
    </figure>
    <div class="invite-fields">
      <${CopyField} label="Invite link" value=${inv.url} buttonLabel="Copy invite link" />
      <${CopyField} label="Peer id" value=${inv.peer_id} buttonLabel="Copy peer id" />
    </div>
  </div>`;
}
