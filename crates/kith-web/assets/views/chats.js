// The chat list (left pane on desktop, the home screen on a phone): conversations and groups
// with their last message, time and unread count, live; group invitations with "Join"; the
// requests; the buttons for a new chat and a new group.

import { html } from '../vendor/preact-htm.js';
import { useAction, InlineError } from '../components/form.js';
import { go, useNow } from '../components/hooks.js';
import { IconPlus, IconUsers } from '../components/icons.js';
import { Row } from '../components/rows.js';
import { CALL_KEYS, chatItems, displayName, invitationsOf, joinGroup, openDialog, useStore } from '../state.js';
import { Requests } from './requests.js';

function Invitation({ g, s }) {
  const { busy, error, run } = useAction();
  const join = () =>
    run(async () => {
      await joinGroup(g.group_id);
      go(`#/group/${g.group_id}`);
    });
  const from = g.invited_by ? `Invitation from ${displayName(s, g.invited_by)}` : 'Invitation to a group';
  return html`<${Row}
    invitation
    title=${g.title}
    text=${from}
    seed=${g.group_id}
    group
    note=${error && html`<${InlineError} error=${error} />`}
    actions=${html`<button type="button" class="btn primary small" disabled=${busy} onClick=${join}>Join</button>`}
  />`;
}

export function Chats({ active }) {
  const s = useStore({ except: CALL_KEYS });
  const now = useNow();
  const items = chatItems(s);
  const invitations = invitationsOf(s);

  return html`<div class="chats">
    <div class="side-tools">
      <button type="button" class="btn primary" onClick=${() => openDialog('newchat')}>
        <${IconPlus} /><span>New chat</span>
      </button>
      <button type="button" class="btn" onClick=${() => openDialog('newgroup')}>
        <${IconUsers} /><span>New group</span>
      </button>
    </div>
    <${Requests} now=${now} active=${active} />
    <h2 class="side-heading">Chats</h2>
    <ul class="rows" aria-label="Chats">
      ${invitations.map((g) => html`<${Invitation} key=${`inv:${g.group_id}`} g=${g} s=${s} />`)}
      ${items.map(
        (it) => html`<${Row}
          key=${`${it.kind}:${it.id}`}
          href=${`#/${it.kind}/${encodeURIComponent(it.id)}`}
          title=${it.title}
          text=${it.text || (it.kind === 'group' ? 'No messages yet' : '')}
          at=${it.at}
          now=${now}
          unread=${it.unread}
          seed=${it.id}
          group=${it.kind === 'group'}
          active=${!!active && active.name === it.kind && active.id === it.id}
        />`,
      )}
    </ul>
    ${s.listsLoaded &&
    !items.length &&
    !invitations.length &&
    html`<p class="empty">No chats yet. Start one with “New chat”, or share your invite link from the node panel.</p>`}
  </div>`;
}
