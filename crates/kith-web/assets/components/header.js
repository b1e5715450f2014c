// The header of every view in the main pane: a "Back" button (phone layout only), the title and
// the view's actions.

import { html, useEffect, useRef } from '../vendor/preact-htm.js';
import { go } from './hooks.js';
import { IconBack } from './icons.js';

/** `focus`: move focus to the title when the view opens (views without a composer). */
export function ViewHeader({ id, title, subtitle = null, avatar = null, children = null, focus = false, back = '#/' }) {
  const h = useRef(null);
  useEffect(() => {
    if (focus && h.current) h.current.focus({ preventScroll: true });
  }, [focus, title]);
  return html`<header class="view-head">
    <button type="button" class="btn ghost back" onClick=${() => go(back)}>
      <${IconBack} /><span>Back</span>
    </button>
    ${avatar}
    <div class="view-title">
      <h2 ref=${h} id=${id} tabindex="-1">${title}</h2>
      ${subtitle && html`<p class="subtitle">${subtitle}</p>`}
    </div>
    ${children && html`<div class="view-actions">${children}</div>`}
  </header>`;
}
