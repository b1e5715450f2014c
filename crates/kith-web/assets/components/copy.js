// A value shown as text with a copy button ("Copy peer id", "Copy invite link").

import { html, useRef, useState } from '../vendor/preact-htm.js';
import { IconCopy } from './icons.js';

function selectText(el) {
  const range = document.createRange();
  range.selectNodeContents(el);
  const sel = getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
}

async function copyText(text, el) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    if (!el) return false;
    selectText(el);
    try {
      return document.execCommand('copy');
    } catch {
      return false;
    }
  }
}

export function CopyField({ label, value, buttonLabel }) {
  const [done, setDone] = useState('');
  const text = useRef(null);
  const timer = useRef(0);

  const copy = async () => {
    const ok = await copyText(value, text.current);
    if (!ok && text.current) selectText(text.current);
    setDone(ok ? 'Copied' : 'Selected: press Ctrl+C to copy');
    clearTimeout(timer.current);
    timer.current = setTimeout(() => setDone(''), 3000);
  };

  return html`<div class="copy-field">
    <p class="copy-label">${label}</p>
    <div class="copy-row">
      <code class="copy-value" ref=${text}>${value}</code>
      <button type="button" class="btn" onClick=${copy}><${IconCopy} /><span>${buttonLabel}</span></button>
    </div>
    <p class="copy-status" role="status">${done}</p>
  </div>`;
}
