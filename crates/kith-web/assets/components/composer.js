// The message composer of direct and group conversations: Enter sends, Shift+Enter starts a new
// line; the text box grows with its text and takes the focus when the conversation opens.

import { html, useEffect, useRef, useState } from '../vendor/preact-htm.js';
import { useId, useMounted } from './hooks.js';
import { IconSend } from './icons.js';

const MAX_HEIGHT = 160;

export function Composer({ onSend, placeholder = 'Write a message', autofocus = true }) {
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
