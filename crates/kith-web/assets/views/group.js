// A group conversation: the shared message list (with senders), the composer, group calls (up to
// four people), and the members panel: invite (admins), remove (admins), leave.

import { html, useMemo, useState } from '../vendor/preact-htm.js';
import { MAX_CALL_SIZE, placeCall } from '../calls.js';
import { plural, shortId } from '../format.js';
import { Composer } from '../components/composer.js';
import { Dialog } from '../components/dialog.js';
import { ActionForm, Field, InlineError, useAction } from '../components/form.js';
import { ViewHeader } from '../components/header.js';
import { go, useId } from '../components/hooks.js';
import { IconPhone, IconPlus, IconUsers, IconVideo } from '../components/icons.js';
import { MessageList } from '../components/messages.js';
import { Avatar } from '../components/rows.js';
import {
  CALL_KEYS,
  closeDialog,
  displayName,
  groupOf,
  inCallNow,
  inviteMember,
  joinGroup,
  leaveGroup,
  loadOlder,
  openDialog,
  removeMember,
  sendMessage,
  setNotice,
  threadOf,
  useSelect,
  useStore,
} from '../state.js';

/** "Invite": add a member by petname, name or peer id (admins only). */
export function InviteMemberDialog({ group }) {
  const s = useStore({ except: CALL_KEYS });
  const [member, setMember] = useState('');
  const g = groupOf(s, group);
  const send = async () => {
    await inviteMember(group, member);
    closeDialog();
    setNotice(`Invitation to ${g ? g.title : 'the group'} sent to ${member.trim()}.`);
  };
  return html`<${Dialog} title=${`Invite to ${g ? g.title : 'group'}`} onClose=${closeDialog}>
    <${ActionForm}
      onSubmit=${send}
      submit="Send invite"
      secondary=${html`<button type="button" class="btn ghost" onClick=${closeDialog}>Cancel</button>`}
    >
      <${Field}
        label="Member"
        value=${member}
        onInput=${setMember}
        required
        autofocus
        hint="A petname, a name or a peer id. They join once they accept."
      />
    <//>
  <//>`;
}

function MemberRow({ s, g, m }) {
  const { busy, error, run } = useAction();
  const me = m.peer_id === s.me;
  const name = me ? 'You' : displayName(s, m.peer_id);
  const canRemove = g.admin && !me && g.state === 'joined';
  return html`<li class="member">
    <${Avatar} title=${name} seed=${m.peer_id} size="small" />
    <span class="member-name">
      <span>${name}</span>
      ${m.admin && html`<span class="tag">admin</span>`}
      ${name !== shortId(m.peer_id) && html`<span class="mono muted small-text">${shortId(m.peer_id)}</span>`}
    </span>
    ${canRemove &&
    html`<button type="button" class="btn ghost small danger-text" disabled=${busy} onClick=${() => run(() => removeMember(g.group_id, m.peer_id))}>
      Remove
    </button>`}
    <${InlineError} error=${error} />
  </li>`;
}

function StateNote({ s, g }) {
  const { busy, error, run } = useAction();
  if (g.state === 'left') return html`<p class="banner">You left this group.</p>`;
  if (g.state === 'removed') return html`<p class="banner warn">You were removed from this group.</p>`;
  if (g.state === 'invited') {
    return html`<div class="banner">
      <p>You are invited${g.invited_by ? html` by <strong>${displayName(s, g.invited_by)}</strong>` : ''}. Join to read and write.</p>
      <button type="button" class="btn primary small" disabled=${busy} onClick=${() => run(() => joinGroup(g.group_id))}>Join</button>
      <${InlineError} error=${error} />
    </div>`;
  }
  return null;
}

export function GroupView({ id }) {
  const s = useStore({ except: CALL_KEYS });
  const g = groupOf(s, id);
  const thread = threadOf(s, 'group', id);
  const [membersOpen, setMembersOpen] = useState(false);
  const leave = useAction();
  const panelId = useId('members');

  const items = useMemo(
    () =>
      thread.messages.map((m) => {
        const outgoing = m.outgoing || m.from === s.me;
        return {
          id: m.id,
          text: m.text,
          at: m.sent_at || m.received_at,
          outgoing,
          sender: outgoing ? 'You' : displayName(s, m.from),
        };
      }),
    [thread.messages, s.me, s.contacts, s.groups, s.inbox],
  );

  const title = g ? g.title : 'Group';
  const members = g ? g.members || [] : [];
  const joined = g && g.state === 'joined';

  const tooBig = members.length > MAX_CALL_SIZE;
  const inCall = useSelect(inCallNow);
  const callHint = useId('callhint');
  const callButton = (video, label, Icon) =>
    html`<button
      type="button"
      class="btn ghost"
      disabled=${tooBig || inCall}
      aria-describedby=${tooBig ? callHint : undefined}
      title=${tooBig ? `Group calls are for up to ${MAX_CALL_SIZE} people` : undefined}
      onClick=${() => placeCall({ group: id }, video)}
    >
      <${Icon} /><span>${label}</span>
    </button>`;

  const doLeave = () =>
    leave.run(async () => {
      await leaveGroup(id);
      go('#/');
    });

  return html`<section class=${`view group${membersOpen ? ' members-open' : ''}`} aria-label=${`Group ${title}`}>
    <${ViewHeader}
      title=${title}
      subtitle=${g ? plural(members.length, 'member') : ''}
      avatar=${html`<${Avatar} title=${title} seed=${id} group />`}
    >
      <button
        type="button"
        class="btn ghost members-toggle"
        aria-expanded=${membersOpen ? 'true' : 'false'}
        aria-controls=${panelId}
        onClick=${() => setMembersOpen(!membersOpen)}
      >
        <${IconUsers} /><span>Members</span>
      </button>
      ${joined && callButton(false, 'Group call', IconPhone)}
      ${joined && callButton(true, 'Group video call', IconVideo)}
      ${joined &&
      g.admin &&
      html`<button type="button" class="btn ghost" onClick=${() => openDialog('invitemember', { group: id })}>
        <${IconPlus} /><span>Invite</span>
      </button>`}
      ${joined &&
      html`<button type="button" class="btn ghost danger-text" disabled=${leave.busy} onClick=${doLeave}>Leave</button>`}
    <//>
    <${InlineError} error=${leave.error} />
    ${joined &&
    tooBig &&
    html`<p class="call-note hint" id=${callHint}>
      Group calls are for up to ${MAX_CALL_SIZE} people (everyone connects to everyone); this group has ${members.length} members.
    </p>`}
    <div class="group-body">
      <div class="group-chat">
        ${g && html`<${StateNote} s=${s} g=${g} />`}
        <${MessageList}
          key=${id}
          items=${items}
          more=${thread.more}
          loading=${thread.older || !thread.loaded}
          onOlder=${() => loadOlder('group', id)}
          error=${thread.error}
          showSender
          empty="No messages in this group yet."
        />
        ${(!g || joined) && html`<${Composer} key=${id} onSend=${(text) => sendMessage('group', id, text)} placeholder=${`Message ${title}`} />`}
      </div>
      <aside class="members" id=${panelId} aria-labelledby=${`${panelId}-h`}>
        <h3 id=${`${panelId}-h`}>Members <span class="muted">(${members.length})</span></h3>
        <ul class="member-list" aria-label="Members">
          ${members.map((m) => html`<${MemberRow} key=${m.peer_id} s=${s} g=${g} m=${m} />`)}
        </ul>
      </aside>
    </div>
  </section>`;
}
