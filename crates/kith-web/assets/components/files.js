// Files in a conversation: the photo filter definitions (one SVG in the page), a file inside a
// message (thumbnail or file row, progress and "Cancel" while it arrives, "Download" once
// complete).

import { html, useState } from '../vendor/preact-htm.js';
import { bytes } from '../format.js';
import { cancelFile, contentUrl, openDialog, thumbnailUrl } from '../state.js';
import { IconFile } from './icons.js';

/** The id of a filter preset's SVG <filter>, for CSS `filter: url(#id)`. */
export const filterId = (name) => `kith-filter-${name}`;

/**
 * The filter presets as SVG filters, defined once in the page: each one a <feColorMatrix> with
 * the node's 4×5 matrix, in sRGB like the node applies it. Previews refer to them by id.
 */
export function FilterDefs({ filters }) {
  if (!filters || !filters.length) return null;
  return html`<svg class="filter-defs" width="0" height="0" aria-hidden="true" focusable="false">
    <defs>
      ${filters.map(
        (f) => html`<filter key=${f.name} id=${filterId(f.name)} color-interpolation-filters="sRGB">
          <feColorMatrix type="matrix" values=${f.matrix.join(' ')} />
        </filter>`,
      )}
    </defs>
  </svg>`;
}

/** The CSS filter that previews a preset ('' for none). */
export const filterStyle = (name) => (name ? `url(#${filterId(name)})` : '');

const THUMB = 240;

/** The size a thumbnail is shown at: the photo's shape within THUMB × THUMB (no layout shift). */
function thumbSize(f) {
  if (!(f.width > 0 && f.height > 0)) return { width: undefined, height: undefined };
  const scale = Math.min(1, THUMB / Math.max(f.width, f.height));
  return { width: Math.max(1, Math.round(f.width * scale)), height: Math.max(1, Math.round(f.height * scale)) };
}

export const isPhoto = (f) => (f.width > 0 && f.height > 0) || /^image\//.test(f.mime || '');

/** Where a file is: "Receiving 45%", "Waiting: <note>", "Failed: <note>", or nothing once here. */
export function fileProgressText(f) {
  if (f.state === 'downloading') {
    const total = f.transfer_size || f.size || 0;
    const pct = total ? Math.min(99, Math.floor(((f.received_bytes || 0) * 100) / total)) : 0;
    return `Receiving ${pct}%`;
  }
  if (f.state === 'paused') return f.note ? `Waiting: ${f.note}` : 'Waiting';
  if (f.state === 'failed') return f.note ? `Failed: ${f.note}` : 'Failed';
  if (f.state === 'cancelled') return 'Cancelled';
  return '';
}

/** Whether a file's transfer can still be cancelled from its progress line: one arriving here. */
export const cancellable = (f) =>
  !f.outgoing && (f.state === 'downloading' || f.state === 'paused' || f.state === 'failed');

/** "Cancel" beside a transfer's progress: stops it for good (what arrived is deleted). */
function CancelButton({ f }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState('');
  const onClick = async () => {
    setBusy(true);
    setError('');
    try {
      await cancelFile(f);
    } catch (e) {
      setError(e.message || String(e));
      setBusy(false);
    }
  };
  return html`<button
      type="button"
      class="btn ghost file-cancel"
      title=${`Stop receiving ${f.name}; what arrived so far is deleted`}
      disabled=${busy}
      onClick=${onClick}
    >
      ${busy ? 'Cancelling…' : 'Cancel'}
    </button>
    ${error && html`<span class="danger-text" role="alert">${error}</span>`}`;
}

/** A file inside a message bubble. */
export function FileBody({ f }) {
  const [noThumb, setNoThumb] = useState(false);
  const complete = f.state === 'complete';
  const progress = fileProgressText(f);
  const photo = isPhoto(f) && !noThumb;
  const size = thumbSize(f);
  const img = html`<img
    class="thumb"
    src=${thumbnailUrl(f.file_id)}
    alt=${`Photo: ${f.name}`}
    width=${size.width}
    height=${size.height}
    loading="lazy"
    onError=${() => setNoThumb(true)}
  />`;
  return html`<div class="file">
    ${photo
      ? complete
        ? html`<button type="button" class="thumb-btn" onClick=${() => openDialog('photo', { file: f })}>${img}</button>`
        : img
      : html`<p class="file-row">
          <${IconFile} />
          <span class="file-name">${f.name}</span>
          <span class="file-size">${bytes(f.size || 0)}</span>
        </p>`}
    ${progress &&
    html`<p class=${`file-progress${f.state === 'failed' ? ' danger-text' : ''}`}>
      ${progress} ${cancellable(f) && html`<${CancelButton} f=${f} />`}
    </p>`}
    ${complete &&
    html`<p class="file-actions">
      <a class="file-link" href=${contentUrl(f.file_id)} download=${f.name}>Download</a>
      ${photo && html`<span class="file-size">${bytes(f.size || 0)}</span>`}
    </p>`}
  </div>`;
}
