// Inline SVG icons (decorative: always aria-hidden; the control carries the name).

import { html } from '../vendor/preact-htm.js';

const svg = (body, cls = '') => html`<svg
  class=${`icon ${cls}`}
  viewBox="0 0 24 24"
  width="20"
  height="20"
  aria-hidden="true"
  focusable="false"
  fill="none"
  stroke="currentColor"
  stroke-width="2"
  stroke-linecap="round"
  stroke-linejoin="round"
>${body}</svg>`;

export const IconBack = () => svg(html`<path d="M15 18l-6-6 6-6" />`);
export const IconSend = () => svg(html`<path d="M4 12l16-8-6 16-2.5-6.5z" /><path d="M11.5 13.5L20 4" />`);
export const IconClock = () => svg(html`<circle cx="12" cy="12" r="9" /><path d="M12 7v5l3 2" />`, 'small');
export const IconCheck = () => svg(html`<path d="M5 12.5l4.5 4.5L19 7.5" />`, 'small');
export const IconChecks = () =>
  svg(html`<path d="M2 12.5l4.5 4.5L16 7.5" /><path d="M11 16l1 1 9.5-9.5" />`, 'small');
export const IconAlert = () => svg(html`<circle cx="12" cy="12" r="9" /><path d="M12 7.5v5.5M12 16.5v.01" />`, 'small');
export const IconPlus = () => svg(html`<path d="M12 5v14M5 12h14" />`);
export const IconUsers = () =>
  svg(
    html`<circle cx="9" cy="8" r="3.5" /><path d="M2.5 20c.5-3.5 3-5.5 6.5-5.5s6 2 6.5 5.5" /><path d="M16 4.8a3.5 3.5 0 010 6.4M18 14.8c2 .7 3.2 2.4 3.5 5.2" />`,
  );
export const IconInbox = () =>
  svg(html`<path d="M3 13h5l1.5 3h5L16 13h5" /><path d="M5 5h14l2 8v6H3v-6z" />`);
export const IconNode = () =>
  svg(
    html`<circle cx="12" cy="12" r="3" /><circle cx="4.5" cy="5" r="2" /><circle cx="19.5" cy="5" r="2" /><circle cx="12" cy="21" r="1.6" /><path d="M6 6.4l3.8 3.6M18 6.4l-3.8 3.6M12 15v4.4" />`,
  );
export const IconShield = () => svg(html`<path d="M12 3l8 3v6c0 4.5-3.4 8-8 9-4.6-1-8-4.5-8-9V6z" /><path d="M8.5 12l2.5 2.5 4.5-4.5" />`);
export const IconEdit = () => svg(html`<path d="M4 20h4L19 9l-4-4L4 16z" /><path d="M13.5 6.5l4 4" />`);
export const IconClose = () => svg(html`<path d="M6 6l12 12M18 6L6 18" />`);
export const IconCopy = () =>
  svg(html`<rect x="8" y="8" width="12" height="12" rx="2" /><path d="M16 8V5a1 1 0 00-1-1H5a1 1 0 00-1 1v10a1 1 0 001 1h3" />`);
export const IconDown = () => svg(html`<path d="M12 5v14M6 13l6 6 6-6" />`);
export const IconLink = () =>
  svg(html`<path d="M10 14a4 4 0 005.7 0l3-3a4 4 0 00-5.7-5.7l-1 1" /><path d="M14 10a4 4 0 00-5.7 0l-3 3a4 4 0 005.7 5.7l1-1" />`);
export const IconFile = () =>
  svg(html`<path d="M14 3H7a2 2 0 00-2 2v14a2 2 0 002 2h10a2 2 0 002-2V8z" /><path d="M14 3v5h5" />`);
export const IconAttach = () =>
  svg(html`<path d="M20 11.5l-8.2 8.2a5 5 0 01-7-7L13 4.5a3.3 3.3 0 014.7 4.7l-8.2 8.2a1.7 1.7 0 01-2.4-2.4L14.5 7.6" />`);
export const IconCamera = () =>
  svg(html`<path d="M4 8h3l2-3h6l2 3h3a1 1 0 011 1v9a1 1 0 01-1 1H4a1 1 0 01-1-1V9a1 1 0 011-1z" /><circle cx="12" cy="13" r="3.5" />`);
export const IconPhone = () =>
  svg(html`<path d="M5 4h3.5l1.5 4.5-2 1.5a11 11 0 006 6l1.5-2 4.5 1.5V19a1 1 0 01-1 1A17 17 0 014 5a1 1 0 011-1z" />`);
export const IconVideo = () => svg(html`<rect x="3" y="6" width="12.5" height="12" rx="2" /><path d="M15.5 10.5L21 7v10l-5.5-3.5" />`);
export const IconVideoOff = () =>
  svg(html`<path d="M15.5 13.5V8a2 2 0 00-2-2H9M5 6a2 2 0 00-2 2v8a2 2 0 002 2h8.5a2 2 0 001.6-.8M15.5 10.5L21 7v10l-3-1.9M3 3l18 18" />`);
export const IconMic = () =>
  svg(html`<rect x="9" y="3" width="6" height="11" rx="3" /><path d="M5.5 11a6.5 6.5 0 0013 0M12 17.5V21" />`);
export const IconMicOff = () =>
  svg(html`<path d="M15 10V6a3 3 0 00-5.8-1M9 9v2a3 3 0 004.9 2.3M5.5 11a6.5 6.5 0 0010.6 5M18.5 11a6.4 6.4 0 01-.6 2.7M12 17.5V21M3 3l18 18" />`);
export const IconHangUp = () =>
  svg(html`<path d="M3.5 14.5c5-4.7 12-4.7 17 0l-2 2.5-3.5-1.2v-2.6a9 9 0 00-6 0v2.6L5.5 17z" />`);
