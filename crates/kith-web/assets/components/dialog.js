// A modal dialog on the native <dialog>: focus goes inside (to [data-autofocus] if any), Escape
// and the Close button close it, and focus returns to what opened it.

import { html, useEffect, useRef } from '../vendor/preact-htm.js';
import { useId } from './hooks.js';
import { IconClose } from './icons.js';

export function Dialog({ title, onClose, children, wide = false }) {
  const ref = useRef(null);
  const close = useRef(onClose);
  close.current = onClose;
  const titleId = useId('dlg');

  useEffect(() => {
    const d = ref.current;
    const opener = document.activeElement;
    if (!d.open) d.showModal();
    const target = d.querySelector('[data-autofocus]');
    if (target) target.focus();
    const onCancel = (e) => {
      e.preventDefault();
      close.current();
    };
    d.addEventListener('cancel', onCancel);
    return () => {
      d.removeEventListener('cancel', onCancel);
      if (d.open) d.close();
      if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
    };
  }, []);

  return html`<dialog ref=${ref} class=${`dialog${wide ? ' wide' : ''}`} aria-labelledby=${titleId}>
    <div class="dialog-head">
      <h2 id=${titleId}>${title}</h2>
      <button type="button" class="icon-btn" aria-label="Close" onClick=${() => close.current()}>
        <${IconClose} />
      </button>
    </div>
    <div class="dialog-body">${children}</div>
  </dialog>`;
}
