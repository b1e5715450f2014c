// The message composer of direct and group conversations: Enter sends, Shift+Enter starts a new
// line; the text box grows with its text and takes the focus when the conversation opens.
// With `onAttach`, "Attach file" (and "Take photo" on touch screens) pick a file to send.

import { html, useEffect, useRef, useState } from '../vendor/preact-htm.js';
import { useId, useMounted } from './hooks.js';
import { IconAttach, IconCamera, IconSend } from './icons.js';

const MAX_HEIGHT = 160;

/** "Attach file" and, on touch screens, "Take photo": hidden file inputs behind buttons. */
function AttachButtons({ onAttach }) {
  const picker = useRef(null);
  const camera = useRef(null);
  const touch = typeof matchMedia === 'function' && matchMedia('(pointer: coarse)').matches;
  const picked = (e) => {
    const input = e.currentTarget;
    const file = input.files && input.files[0];
    input.value = '';
    if (file) onAttach(file);
  };
  return html`
    <input ref=${picker} type="file" hidden aria-label="File to send" onChange=${picked} />
    <button type="button" class="btn ghost attach" aria-label="Attach file" title="Attach file" onClick=${() => picker.current.click()}>
      <${IconAttach} />
    </button>
    ${touch &&
    html`<input ref=${camera} type="file" accept="image/*" capture="environment" hidden aria-label="Photo to send" onChange=${picked} />
      <button type="button" class="btn ghost attach" aria-label="Take photo" title="Take photo" onClick=${() => camera.current.click()}>
        <${IconCamera} />
      </button>`}
  `;
}

export function Composer({ onSend, onAttach, placeholder = 'Write a message', autofocus = true }) {
  const [text, setText] = useState('');
  const [error, setError] = useState('');
  const box = useRef(null);
  const id = useId('msg');
  const mounted = useMounted();

  const grow = () => {
    const el = box.current;
    if (!el) return;
    el.style.height = 'auto';
    el.style.height = `${Math.min(el.scrollHeight, MAX_HEIGHT)}px`;
  };

  useEffect(() => {
    if (autofocus && box.current && matchMedia('(hover: hover)').matches) box.current.focus({ preventScroll: true });
  }, []);
  useEffect(grow, [text]);

  async function send() {
    const value = text.trim();
    if (!value) return;
    setText('');
    setError('');
    box.current.focus();
    try {
      await onSend(value);
    } catch (e) {
      if (!mounted.current) return;
      setError(e.message || String(e));
      setText((cur) => cur || value);
    }
  }

  const onKeyDown = (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.altKey && !e.ctrlKey && !e.metaKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  };

  return html`<form
    class="composer"
    onSubmit=${(e) => {
      e.preventDefault();
      send();
    }}
  >
    ${error && html`<p class="form-error" role="alert">${error}</p>`}
    <div class="composer-row">
      ${onAttach && html`<${AttachButtons} onAttach=${onAttach} />`}
      <label for=${id} class="sr-only">Message</label>
      <textarea
        id=${id}
        ref=${box}
        rows="1"
        value=${text}
        placeholder=${placeholder}
        onInput=${(e) => setText(e.currentTarget.value)}
        onKeyDown=${onKeyDown}
        enterkeyhint="send"
        maxlength="65536"
      ></textarea>
      <button type="submit" class="btn primary send" aria-label="Send"><${IconSend} /></button>
    </div>
  </form>`;
}
