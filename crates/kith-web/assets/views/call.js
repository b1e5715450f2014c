// Calls on screen, over whatever view is open: the incoming call (full screen, "Accept" and
// "Decline", ringing), the call itself (the others' video or avatar, our preview, "Mute",
// "Camera off", "Hang up", the time and the connection quality) and "Check microphone and
// camera" (device choice, camera preview, microphone level), offered before the first call.

import { html, useEffect, useRef, useState } from '../vendor/preact-htm.js';
import {
  acceptCall,
  declineCall,
  devicePrefs,
  dismissCall,
  hangUp,
  listDevices,
  markDeviceCheckDone,
  openMedia,
  placeCall,
  qualityWords,
  setDevicePrefs,
  stopStream,
  toggleCamera,
  toggleMute,
  watchLevel,
} from '../calls.js';
import { Dialog } from '../components/dialog.js';
import { useId, useMounted, useNow } from '../components/hooks.js';
import { IconHangUp, IconMic, IconMicOff, IconPhone, IconVideo, IconVideoOff } from '../components/icons.js';
import { Avatar } from '../components/rows.js';
import { closeDialog, displayName, groupOf, petnameOf, useStore } from '../state.js';

const PHASE_WORDS = {
  calling: 'Calling…',
  ringing: 'Ringing…',
  connecting: 'Connecting…',
  connected: 'Connected',
};

/** Why a call ended, in words (shown for a few seconds). */
function endWords(call) {
  switch (call.outcome) {
    case 'declined':
      return 'Declined';
    case 'missed':
      return call.direction === 'outgoing' ? 'No answer' : 'Missed call';
    case 'busy':
      return 'Busy';
    case 'unavailable':
      return 'Unavailable';
    case 'failed':
      return 'Call failed';
    default:
      return 'Call ended';
  }
}

/** mm:ss (h:mm:ss past an hour). */
function clock(ms) {
  const secs = Math.max(0, Math.floor(ms / 1000));
  const two = (n) => String(n).padStart(2, '0');
  const h = Math.floor(secs / 3600);
  const m = Math.floor((secs % 3600) / 60);
  return h ? `${h}:${two(m)}:${two(secs % 60)}` : `${two(m)}:${two(secs % 60)}`;
}

const nameOf = (s, peer, name) => petnameOf(s, peer) || name || displayName(s, peer);

/** A MediaStream in a <video> (or <audio> for voice); `muted` for our own preview. */
function Media({ stream, video, muted = false, label = '' }) {
  const ref = useRef(null);
  useEffect(() => {
    const el = ref.current;
    if (!el || el.srcObject === stream) return;
    el.srcObject = stream;
    if (stream) el.play().catch(() => {});
  }, [stream]);
  return video
    ? html`<video ref=${ref} autoplay playsinline muted=${muted} aria-label=${label}></video>`
    : html`<audio ref=${ref} autoplay></audio>`;
}

function Tile({ s, call, peer, remote }) {
  const name = displayName(s, peer);
  const live = remote.stream && call.video && remote.stream.getVideoTracks().length > 0;
  return html`<figure class="tile">
    ${live
      ? html`<${Media} stream=${remote.stream} video label=${`Video of ${name}`} />`
      : html`<${Avatar} title=${name} seed=${peer} size="big" />
          <${Media} stream=${remote.stream} />`}
    <figcaption>${name}${remote.state === 'connected' ? '' : html` <span class="muted">(connecting)</span>`}</figcaption>
  </figure>`;
}

/** The call in progress (or just ended, with the reason). */
function CallView({ s, call }) {
  const now = useNow(1000);
  const headId = useId('call');
  const h = useRef(null);
  useEffect(() => {
    if (h.current) h.current.focus({ preventScroll: true });
  }, []);
  const ended = call.phase === 'ended';
  const status = ended ? endWords(call) : PHASE_WORDS[call.phase] || '';
  const remotes = Object.entries(call.remotes);
  const hasCamera = call.local && call.local.getVideoTracks().length > 0;
  const q = call.quality;
  return html`<section class=${`call-view${call.video ? ' video' : ''}`} role="region" aria-labelledby=${headId}>
    <header class="call-head">
      <h2 id=${headId} ref=${h} tabindex="-1">Call with ${call.title}</h2>
      <p class="call-status" role="status">${status}${ended && call.error ? `: ${call.error}` : ''}</p>
      ${call.answeredAt && !ended && html`<p class="call-timer"><span class="sr-only">Call time </span><time>${clock(now - call.answeredAt)}</time></p>`}
      ${call.phase === 'connected' && html`<p class=${`quality q-${q ? q.level : 'unknown'}`}><span class="dot" aria-hidden="true"></span>${qualityWords(q)}</p>`}
    </header>
    <div class=${`call-stage n${Math.max(1, remotes.length)}`}>
      ${remotes.length
        ? remotes.map(([peer, r]) => html`<${Tile} key=${peer} s=${s} call=${call} peer=${peer} remote=${r} />`)
        : html`<figure class="tile"><${Avatar} title=${call.title} seed=${call.seed} group=${!!call.group} size="big" /></figure>`}
      ${hasCamera &&
      !ended &&
      html`<div class="self-view">
        ${call.cameraOff ? html`<p>Camera off</p>` : html`<${Media} stream=${call.local} video muted label="Your camera" />`}
      </div>`}
    </div>
    <div class="call-controls">
      ${ended
        ? html`<button type="button" class="btn" onClick=${dismissCall}>Close</button>`
        : html`<button type="button" class="btn round" aria-pressed=${call.muted ? 'true' : 'false'} disabled=${!call.local} onClick=${toggleMute}>
              ${call.muted ? html`<${IconMicOff} /><span>Unmute</span>` : html`<${IconMic} /><span>Mute</span>`}
            </button>
            ${hasCamera &&
            html`<button type="button" class="btn round" aria-pressed=${call.cameraOff ? 'true' : 'false'} onClick=${toggleCamera}>
              ${call.cameraOff ? html`<${IconVideo} /><span>Camera on</span>` : html`<${IconVideoOff} /><span>Camera off</span>`}
            </button>`}
            <button type="button" class="btn round danger hangup" onClick=${hangUp}><${IconHangUp} /><span>Hang up</span></button>`}
    </div>
  </section>`;
}

/** A call ringing for us: full screen, modal, whatever view is open. */
function IncomingCall({ s, report }) {
  const ref = useRef(null);
  const headId = useId('ring');
  const name = nameOf(s, report.peer, report.name);
  const g = report.group ? groupOf(s, report.group) : null;
  useEffect(() => {
    const d = ref.current;
    if (!d.open) d.showModal();
    const accept = d.querySelector('[data-autofocus]');
    if (accept) accept.focus();
    // Escape does not decline: the buttons say what happens.
    const onCancel = (e) => e.preventDefault();
    d.addEventListener('cancel', onCancel);
    return () => {
      d.removeEventListener('cancel', onCancel);
      if (d.open) d.close();
    };
  }, []);
  const kind = report.video ? 'video call' : 'voice call';
  return html`<dialog ref=${ref} class="call-screen" aria-labelledby=${headId} aria-describedby=${`${headId}-d`}>
    <${Avatar} title=${name} seed=${report.peer} size="big" />
    <h2 id=${headId}>Incoming call from ${name}</h2>
    <p id=${`${headId}-d`} class="muted">${report.group ? `Group ${kind} in ${g ? g.title : 'a group'}` : kind[0].toUpperCase() + kind.slice(1)}</p>
    <div class="call-controls">
      <button type="button" class="btn round danger" onClick=${declineCall}><${IconHangUp} /><span>Decline</span></button>
      <button type="button" class="btn round primary" data-autofocus onClick=${acceptCall}>
        ${report.video ? html`<${IconVideo} />` : html`<${IconPhone} />`}<span>Accept</span>
      </button>
    </div>
  </dialog>`;
}

/** What the app shows of calls, in every view. */
export function CallLayer() {
  const s = useStore();
  return html`${s.call && html`<${CallView} s=${s} call=${s.call} />`}
  ${s.incoming && html`<${IncomingCall} key=${s.incoming.call_id} s=${s} report=${s.incoming} />`}`;
}

function DeviceSelect({ label, devices, value, onChange, fallback }) {
  const id = useId('dev');
  return html`<div class="field">
    <label for=${id}>${label}</label>
    <select id=${id} value=${value} onChange=${(e) => onChange(e.currentTarget.value)}>
      <option value="">System default</option>
      ${devices.map((d, i) => html`<option key=${d.deviceId || i} value=${d.deviceId}>${d.label || `${fallback} ${i + 1}`}</option>`)}
    </select>
  </div>`;
}

/**
 * "Check microphone and camera": the devices to use (kept in this browser), a live preview and a
 * level meter. `then` ({ target, video }): the call to place on "Continue" (the first call).
 */
export function DeviceCheckDialog({ then = null }) {
  const [prefs, setPrefs] = useState(devicePrefs);
  const [devices, setDevices] = useState({ mics: [], cameras: [] });
  const [stream, setStream] = useState(null);
  const [level, setLevel] = useState(0);
  const [error, setError] = useState('');
  const mounted = useMounted();
  const meterId = useId('level');

  useEffect(() => {
    let live = null;
    let stop = () => {};
    let gone = false;
    // No camera: the microphone alone.
    const open = navigator.mediaDevices
      ? openMedia({ video: true, ...prefs }).catch(() => openMedia(prefs))
      : Promise.reject(new Error('this browser offers no microphone or camera here'));
    open
      .then(async (st) => {
        if (gone) {
          stopStream(st);
          return;
        }
        live = st;
        setStream(st);
        setError('');
        stop = watchLevel(st, (v) => mounted.current && setLevel(v));
        const found = await listDevices();
        if (!gone) setDevices(found);
      })
      .catch((e) => !gone && setError(`No microphone or camera could be opened: ${e.message}`));
    return () => {
      gone = true;
      stop();
      stopStream(live);
    };
  }, [prefs.mic, prefs.camera]);

  const choose = (key) => (value) => {
    const next = { ...prefs, [key]: value };
    setPrefs(next);
    setDevicePrefs(next);
  };
  const proceed = () => {
    markDeviceCheckDone();
    closeDialog();
    if (then) placeCall(then.target, then.video);
  };
  const camera = stream && stream.getVideoTracks().length > 0;

  return html`<${Dialog} title="Check microphone and camera" onClose=${closeDialog}>
    <div class="device-preview">
      ${camera ? html`<${Media} stream=${stream} video muted label="Camera preview" />` : html`<p class="muted">No camera picture</p>`}
    </div>
    ${error && html`<p class="form-error" role="alert">${error}</p>`}
    <${DeviceSelect} label="Microphone" devices=${devices.mics} value=${prefs.mic} onChange=${choose('mic')} fallback="Microphone" />
    <div class="field">
      <label for=${meterId}>Microphone level</label>
      <meter id=${meterId} class="level" min="0" max="100" low="10" high="90" optimum="50" value=${level}>${level}%</meter>
      <p class="hint">Say something: the bar should move.</p>
    </div>
    <${DeviceSelect} label="Camera" devices=${devices.cameras} value=${prefs.camera} onChange=${choose('camera')} fallback="Camera" />
    <div class="form-actions">
      <button type="button" class="btn primary" data-autofocus onClick=${proceed}>Continue</button>
    </div>
  <//>`;
}
