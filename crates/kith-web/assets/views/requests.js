// Requests: people who wrote to us first, shown above the chats on the chat list screen. Accept
// lets them into the chat list; Block refuses their messages.

import { html } from '../vendor/preact-htm.js';
import { Badge, Row } from '../components/rows.js';
import { CALL_KEYS, displayName, requestsOf, useStore } from '../state.js';
import { TrustButtons } from './conversation.js';

export function Requests({ now, active }) {
  const s = useStore({ except: CALL_KEYS });
  const list = requestsOf(s);
  if (!list.length) return null;
  return html`<section class="requests" aria-labelledby="requests-heading">
    <h2 class="side-heading" id="requests-heading">
      Requests <${Badge} count=${list.length} label="waiting" />
    </h2>
    <p class="side-note">People not in your contacts. Accept to chat with them, or block them.</p>
    <ul class="rows" aria-label="Requests">
      ${list.map(
        (r) => html`<${Row}
          key=${r.peer_id}
          stacked
          href=${`#/chat/${encodeURIComponent(r.peer_id)}`}
          title=${displayName(s, r.peer_id)}
          text=${r.last_text}
          at=${r.last_message_at}
          now=${now}
          unread=${r.unread}
          seed=${r.peer_id}
          active=${!!active && active.name === 'chat' && active.id === r.peer_id}
          actions=${html`<${TrustButtons} peer=${r.peer_id} />`}
        />`,
      )}
    </ul>
  </section>`;
}
