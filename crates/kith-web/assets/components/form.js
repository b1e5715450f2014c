// Form parts shared by every view: a labelled field and a form that runs one async action,
// shows its error (the node's own words) and stays usable.

import { html, useState } from '../vendor/preact-htm.js';
import { useId, useMounted } from './hooks.js';

/** A labelled text input. `autofocus` marks it for the dialog (or view) to focus. */
export function Field({ label, value, onInput, hint, autofocus = false, type = 'text', ...rest }) {
  const id = useId('f');
  return html`<div class="field">
    <label for=${id}>${label}</label>
    <input
      id=${id}
      type=${type}
      value=${value}
      onInput=${(e) => onInput(e.currentTarget.value)}
      aria-describedby=${hint ? `${id}-hint` : undefined}
      data-autofocus=${autofocus ? '' : undefined}
      autocomplete="off"
      autocapitalize="off"
      spellcheck=${false}
      ...${rest}
    />
    ${hint && html`<p class="hint" id=${`${id}-hint`}>${hint}</p>`}
  </div>`;
}

/**
 * A form around one async action. `children` may be a function of `busy`. The submit button keeps
 * its name while working (it is disabled and the form is aria-busy).
 */
export function ActionForm({ onSubmit, submit, children, secondary = null, class: cls = '' }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState('');
  const mounted = useMounted();

  async function handle(e) {
    e.preventDefault();
    if (busy) return;
    setBusy(true);
    setError('');
    try {
      await onSubmit();
    } catch (err) {
      if (mounted.current) setError((err && err.message) || String(err));
    } finally {
      if (mounted.current) setBusy(false);
    }
  }

  return html`<form class=${`form ${cls}`} onSubmit=${handle} aria-busy=${busy ? 'true' : 'false'}>
    ${typeof children === 'function' ? children(busy) : children}
    ${error && html`<p class="form-error" role="alert">${error}</p>`}
    <div class="form-actions">
      ${secondary}
      <button type="submit" class="btn primary" disabled=${busy}>${submit}</button>
    </div>
  </form>`;
}

/** An inline error for actions outside a form (buttons in lists and banners). */
export function InlineError({ error }) {
  return error ? html`<p class="form-error" role="alert">${error}</p>` : null;
}

/** Runs an async action from a button: busy flag and error text, for rows and banners. */
export function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState('');
  const mounted = useMounted();
  const run = async (fn) => {
    if (busy) return undefined;
    setBusy(true);
    setError('');
    try {
      return await fn();
    } catch (err) {
      if (mounted.current) setError((err && err.message) || String(err));
      return undefined;
    } finally {
      if (mounted.current) setBusy(false);
    }
  };
  return { busy, error, run };
}
