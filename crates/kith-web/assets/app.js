// The entry point: the session exchange (before anything renders), the hash router, the layout
// (two panes from 760 px, one pane with "Back" below), the dialogs and the calls (over any view).

import { html, render, useEffect, useRef, useState } from './vendor/preact-htm.js';
import { FilterDefs } from './components/files.js';
import { go } from './components/hooks.js';
import { IconLink, IconNode } from './components/icons.js';
import { placeCall } from './calls.js';
import { boot, CALL_KEYS, chatItems, needsFirstRun, requestsOf, setOpen, takeLaunch, useSelect, useStore } from './state.js';
import { CallLayer, DeviceCheckDialog } from './views/call.js';
import { Chats } from './views/chats.js';
import { Conversation } from './views/conversation.js';
import { FirstRun } from './views/firstrun.js';
import { GroupView, InviteMemberDialog } from './views/group.js';
import { InviteView } from './views/invite.js';
import { NewChat } from './views/newchat.js';
import { NewGroup } from './views/newgroup.js';
import { NodeView } from './views/node.js';
import { PetnameDialog } from './views/petname.js';
import { PhotoDialog, SendFileDialog } from './views/sendfile.js';
import { SignIn } from './views/signin.js';
import { VerifyDialog } from './views/verify.js';

// --- routing -------------------------------------------------------------------------------------

function parseRoute(hash) {
  const parts = hash.replace(/^#\/?/, '').split('/');
  const [name, raw] = parts;
  let id = '';
  try {
    id = raw ? decodeURIComponent(raw) : '';
  } catch {
    id = raw || '';
  }
  switch (name) {
    case 'chat':
    case 'group':
      return id ? { name, id } : { name: 'home' };
    case 'node':
    case 'invite':
    case 'welcome':
      return { name };
    default:
      return { name: 'home' };
  }
}

function useRoute() {
  const [route, setRoute] = useState(() => parseRoute(location.hash));
  useEffect(() => {
    const onChange = () => setRoute(parseRoute(location.hash));
    window.addEventListener('hashchange', onChange);
    return () => window.removeEventListener('hashchange', onChange);
  }, []);
  return route;
}

// --- layout --------------------------------------------------------------------------------------

const DIALOGS = {
  newchat: NewChat,
  newgroup: NewGroup,
  verify: VerifyDialog,
  petname: PetnameDialog,
  invitemember: InviteMemberDialog,
  sendfile: SendFileDialog,
  photo: PhotoDialog,
  devicecheck: DeviceCheckDialog,
};

function ConnectionStatus({ socket }) {
  return html`<p class="conn" role="status">
    ${socket === 'down' && html`<span class="pill warn"><span class="dot" aria-hidden="true"></span>Reconnecting…</span>`}
  </p>`;
}

function TopBar({ s, route, inCall }) {
  // Behind the call view (which covers the window) nothing can be reached by keyboard either.
  return html`<header class="topbar" inert=${inCall}>
    <h1 class="brand"><a href="#/" aria-label="kith, chats">kith</a></h1>
    <${ConnectionStatus} socket=${s.socket} />
    <p class="notice-area" aria-live="polite">${s.notice}</p>
    <div class="top-nav">
      <button
        type="button"
        class=${`btn ghost${route.name === 'node' ? ' current' : ''}`}
        aria-current=${route.name === 'node' ? 'page' : undefined}
        onClick=${() => go('#/node')}
      >
        <${IconNode} /><span>Node</span>
      </button>
    </div>
  </header>`;
}

function Home() {
  return html`<section class="view home-empty" aria-label="No chat open">
    <div class="home-card">
      <p class="brand big" aria-hidden="true">kith</p>
      <p>Pick a chat on the left, or start a new one.</p>
      <p><a class="btn" href="#/invite"><${IconLink} /><span>Your invite link</span></a></p>
      <p class="muted">Messages go straight to your friends’ nodes, end-to-end encrypted. When someone is offline, they are queued and delivered later.</p>
    </div>
  </section>`;
}

function MainView({ route }) {
  switch (route.name) {
    case 'chat':
      return html`<${Conversation} key=${`c:${route.id}`} peer=${route.id} />`;
    case 'group':
      return html`<${GroupView} key=${`g:${route.id}`} id=${route.id} />`;
    case 'node':
      return html`<${NodeView} />`;
    case 'invite':
      return html`<${InviteView} />`;
    default:
      return html`<${Home} />`;
  }
}

let firstRunOffered = false;

function App() {
  const s = useStore({ except: CALL_KEYS });
  const inCall = useSelect((x) => !!x.call);
  const route = useRoute();

  // Tell the store what is on screen (it loads it, marks it read, follows it).
  const openKey = route.name === 'chat' || route.name === 'group' ? `${route.name}:${route.id}` : '';
  useEffect(() => {
    if (s.auth !== 'ok') return;
    if (!openKey) {
      setOpen(null);
      return;
    }
    const kind = route.name;
    const id = route.id;
    setOpen({ kind, id }).then((res) => {
      // A chat opened by name or petname: continue under the peer id.
      if (kind === 'chat' && res && res.peer_id && res.peer_id !== id) go(`#/chat/${encodeURIComponent(res.peer_id)}`, true);
    });
  }, [openKey, s.auth]);

  // The first run shows once, when we have no name and did not skip it.
  useEffect(() => {
    if (!firstRunOffered && needsFirstRun(s) && route.name === 'home') {
      firstRunOffered = true;
      go('#/welcome', true);
    }
  }, [s.names, s.auth]);

  // Views without a composer focus their heading (ViewHeader); the first run its name field;
  // coming back to the list (phone "Back") focuses the chat that was open.
  const prevRoute = useRef(route);
  useEffect(() => {
    const prev = prevRoute.current;
    prevRoute.current = route;
    if (route.name === 'welcome') {
      const field = document.querySelector('main [data-autofocus]');
      if (field) field.focus();
    } else if (route.name === 'home' && (prev.name === 'chat' || prev.name === 'group')) {
      const link = document.querySelector(`.side a[href="#/${prev.name}/${encodeURIComponent(prev.id)}"]`);
      if (link && link.offsetParent) link.focus();
    }
  }, [route.name, route.id, s.auth]);

  // `kith call WHO` opened this page: call them once signed in.
  useEffect(() => {
    if (s.auth !== 'ok' || !s.launch) return;
    const l = takeLaunch();
    placeCall({ to: l.call }, l.video);
  }, [s.auth, s.launch]);

  const unread = chatItems(s).reduce((n, it) => n + it.unread, 0) + requestsOf(s).length;
  useEffect(() => {
    if (s.auth === 'signed-out') document.title = 'kith — not signed in';
    else document.title = unread ? `(${unread}) kith` : 'kith';
  }, [s.auth, unread]);

  if (s.auth === 'unknown') {
    return html`<main class="center-page" id="main"><p class="muted" role="status">Opening kith…</p></main>`;
  }
  if (s.auth === 'signed-out') return html`<${SignIn} />`;

  const Dlg = s.dialog && DIALOGS[s.dialog.name];

  if (route.name === 'welcome') {
    return html`<div class="app one">
      <${TopBar} s=${s} route=${route} inCall=${inCall} />
      <main class="main single" id="main" inert=${inCall}><${FirstRun} /></main>
      ${Dlg && html`<${Dlg} ...${s.dialog} />`}
      <${CallLayer} />
    </div>`;
  }

  const home = route.name === 'home';
  return html`<div class=${`app ${home ? 'at-home' : 'in-view'}`}>
    <${TopBar} s=${s} route=${route} inCall=${inCall} />
    <main class="panes" id="main" inert=${inCall}>
      <nav class="side" aria-label="Conversations">
        <${Chats} active=${route} />
      </nav>
      <div class="main">
        <${MainView} route=${route} />
      </div>
    </main>
    ${Dlg && html`<${Dlg} key=${s.dialog.name} ...${s.dialog} />`}
    <${CallLayer} />
    <${FilterDefs} filters=${s.filters} />
  </div>`;
}

// The token leaves the address bar before the first render (boot strips it first thing).
boot().finally(() => {
  const root = document.getElementById('app');
  root.textContent = '';
  render(html`<${App} />`, root);
});
