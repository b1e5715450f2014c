// "Send file": the chosen file's name and size; for photos a preview with the filter presets
// (previewed through the page's SVG filters, applied for real by the node), a caption and
// "Send original". Also the full view of a received or sent photo.

import { html, useEffect, useMemo, useState } from '../vendor/preact-htm.js';
import { bytes } from '../format.js';
import { Dialog } from '../components/dialog.js';
import { filterStyle } from '../components/files.js';
import { ActionForm, Field } from '../components/form.js';
import { useId, useMounted } from '../components/hooks.js';
import { CALL_KEYS, closeDialog, contentUrl, getState, loadFilters, sendFile, useStore } from '../state.js';

const isImage = (file) => /^image\//.test(file.type || '');

function FilterPicker({ filters, value, onChange, disabled }) {
  const name = useId('filter');
  const options = [{ name: '', label: 'None' }, ...filters];
  return html`<fieldset class="filter-picker" disabled=${disabled}>
    <legend>Filter</legend>
    <div class="chips">
      ${options.map(
        (f) => html`<label key=${f.name || 'none'} class=${`chip${value === f.name ? ' on' : ''}`}>
          <input type="radio" name=${name} value=${f.name} checked=${value === f.name} onChange=${() => onChange(f.name)} />
          <span>${f.label}</span>
        </label>`,
      )}
    </div>
  </fieldset>`;
}

export function SendFileDialog({ peer, file }) {
  const s = useStore({ except: CALL_KEYS });
  const image = isImage(file);
  const [caption, setCaption] = useState('');
  const [filter, setFilter] = useState('');
  const [original, setOriginal] = useState(false);
  const [filtersError, setFiltersError] = useState('');
  const mounted = useMounted();
  const originalId = useId('orig');

  const preview = useMemo(() => (image ? URL.createObjectURL(file) : ''), [file]);
  useEffect(() => () => preview && URL.revokeObjectURL(preview), [preview]);
  useEffect(() => {
    if (image) loadFilters().catch((e) => mounted.current && setFiltersError(e.message));
  }, []);

  const send = async () => {
    await sendFile(peer, file, {
      name: file.name || (image ? 'photo' : 'file'),
      caption,
      filter: image && !original ? filter : '',
      original: image && original,
    });
    // Still this dialog (a Cancel during the upload may have closed it, and another opened).
    const d = getState().dialog;
    if (d && d.file === file) closeDialog();
  };

  return html`<${Dialog} title="Send file" onClose=${closeDialog}>
    <p class="file-facts">
      <span class="file-name">${file.name || 'Pasted image'}</span>
      <span class="muted">${bytes(file.size)}</span>
    </p>
    ${image &&
    html`<div class="preview">
      <img src=${preview} alt=${`Preview of ${file.name || 'the image'}`} style=${{ filter: original ? '' : filterStyle(filter) }} />
    </div>`}
    <${ActionForm}
      onSubmit=${send}
      submit="Send"
      secondary=${html`<button type="button" class="btn ghost" onClick=${closeDialog}>Cancel</button>`}
    >
      ${(busy) => html`
        ${image && s.filters && html`<${FilterPicker} filters=${s.filters} value=${filter} onChange=${setFilter} disabled=${original || busy} />`}
        ${filtersError && html`<p class="hint">Filters are not available: ${filtersError}</p>`}
        <${Field} label="Caption" value=${caption} onInput=${setCaption} maxlength="2000" autofocus disabled=${busy} />
        ${image &&
        html`<div class="check">
          <input id=${originalId} type="checkbox" checked=${original} disabled=${busy} onChange=${(e) => setOriginal(e.currentTarget.checked)} />
          <label for=${originalId}>Send original</label>
          <p class="hint">The photo as it is, full size, without a filter (metadata is removed, except its orientation).</p>
        </div>`}
        <p class="hint" role="status">${busy ? `Sending ${file.name || 'the file'} (${bytes(file.size)})…` : ''}</p>
      `}
    <//>
  <//>`;
}

/** A photo at full size, with its "Download" link. */
export function PhotoDialog({ file }) {
  return html`<${Dialog} title=${file.name} onClose=${closeDialog} wide>
    <div class="full-photo">
      <img src=${contentUrl(file.file_id)} alt=${`Photo: ${file.name}`} />
    </div>
    ${file.caption && html`<p class="text">${file.caption}</p>`}
    <p class="form-actions">
      <a class="btn primary" href=${contentUrl(file.file_id)} download=${file.name} data-autofocus>Download</a>
    </p>
  <//>`;
}
