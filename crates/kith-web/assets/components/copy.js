// A value in a read-only text box with a copy button ("Copy peer id", "Copy invite link").

import { html, useRef, useState } from '../vendor/preact-htm.js';
import { useId } from './hooks.js';
import { IconCopy } from './icons.js';

async function copyText(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    if (!input) return false;
    input.focus();
    input.select();
    try {
      return document.execCommand('copy');
    } catch {
      return false;
    }
  }
}

export function CopyField({ label, value, buttonLabel }) {
  const [done, setDone] = useState('');
  const input = useRef(null);
  const id = useId('copy');
  const timer = useRef(0);

  const copy = async () => {
    const ok = await copyText(value, input.current);
    setDone(ok ? 'Copied' : 'Selected: press Ctrl+C to copy');
    clearTimeout(timer.current);
    timer.current = setTimeout(() => setDone(''), 3000);
  };

  return html`<div class="copy-field">
    <label for=${id}>${label}</label>
    <div class="copy-row">
      <input id=${id} ref=${input} class="mono copy-value" readonly value=${value} onFocus=${(e) => e.currentTarget.select()} />
      <button type="button" class="btn" onClick=${copy}><${IconCopy} /><span>${buttonLabel}</span></button>
    </div>
    <p class="copy-status" role="status">${done}</p>
  </div>`;
}
