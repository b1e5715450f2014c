// "Your invite": the link, QR code and peer id to give to friends.

import { html } from '../vendor/preact-htm.js';
import { CALL_KEYS, useStore } from '../state.js';
import { ViewHeader } from '../components/header.js';
import { InviteCard } from '../components/invitecard.js';

export function InviteView() {
  const s = useStore({ except: CALL_KEYS });
  const name = s.names && s.names[0] ? s.names[0].name : '';
  return html`<section class="view page-view" aria-labelledby="invite-title">
    <${ViewHeader} id="invite-title" title="Your invite" subtitle="Give this to a friend so they can start a chat with you" focus back="#/node" />
    <div class="page-body">
      <p>${name ? html`Your name is <strong>${name}</strong>: friends can also start a chat with it.` : 'You have no name yet: friends reach you with this link or code.'}</p>
      <${InviteCard} />
    </div>
  </section>`;
}
