// "Your invite": the link, QR code and peer id to give to friends.

import { html } from '../vendor/preact-htm.js';
import { ViewHeader } from '../components/header.js';
import { InviteCard } from '../components/invitecard.js';

export function InviteView() {
  return html`<section class="view page-view" aria-labelledby="invite-title">
    <${ViewHeader} id="invite-title" title="Your invite" subtitle="Give this to a friend so they can start a chat with you" focus back="#/node" />
    <div class="page-body">
      <${InviteCard} />
    </div>
  </section>`;
}
