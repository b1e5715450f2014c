// Words for numbers, times and ids. Pure functions, no state.

/** A peer id shortened for display: every key starts with "12D3KooW", so keep the tail. */
export function shortId(id) {
  if (!id) return '';
  return id.length > 14 ? `${id.slice(0, 4)}…${id.slice(-8)}` : id;
}

export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

const DAY = 86400000;

function sameDay(a, b) {
  return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
}

const clock = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const weekday = new Intl.DateTimeFormat(undefined, { weekday: 'short' });
const dayMonth = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short' });
const dayMonthYear = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short', year: 'numeric' });
const full = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });
const dayLong = new Intl.DateTimeFormat(undefined, { weekday: 'long', day: 'numeric', month: 'long', year: 'numeric' });

/** Short relative time for lists: "now", "5 min", "14:02", "Tue", "3 Mar", "3 Mar 2023". */
export function relativeTime(ms, now = Date.now()) {
  if (!ms) return '';
  const diff = now - ms;
  if (diff < 60000) return 'now';
  if (diff < 3600000) return `${Math.floor(diff / 60000)} min`;
  const d = new Date(ms);
  const today = new Date(now);
  if (sameDay(d, today)) return clock.format(d);
  if (diff < 6 * DAY) return weekday.format(d);
  if (d.getFullYear() === today.getFullYear()) return dayMonth.format(d);
  return dayMonthYear.format(d);
}

/** The time of day of a message. */
export const timeOfDay = (ms) => (ms ? clock.format(new Date(ms)) : '');

/** The full date and time, for title attributes. */
export const fullTime = (ms) => (ms ? full.format(new Date(ms)) : '');

/** A day heading between messages: "Today", "Yesterday" or the date. */
export function dayHeading(ms, now = Date.now()) {
  const d = new Date(ms);
  const today = new Date(now);
  if (sameDay(d, today)) return 'Today';
  if (sameDay(d, new Date(now - DAY))) return 'Yesterday';
  return dayLong.format(d);
}

export const isoTime = (ms) => (ms ? new Date(ms).toISOString() : '');

export function isSameDay(a, b) {
  return sameDay(new Date(a), new Date(b));
}

/** A duration in words, two units at most: "2 hours 5 minutes", "3 days 1 hour", "40 seconds". */
export function duration(secs) {
  secs = Math.max(0, Math.floor(secs));
  const units = [
    [86400, 'day'],
    [3600, 'hour'],
    [60, 'minute'],
    [1, 'second'],
  ];
  const parts = [];
  for (const [size, name] of units) {
    if (secs >= size || (size === 1 && parts.length === 0)) {
      const n = Math.floor(secs / size);
      secs -= n * size;
      parts.push(plural(n, name));
      if (parts.length === 2) break;
    } else if (parts.length) break;
  }
  return parts.join(' ');
}

/** When something expires, in words: "expires in 29 days", "expires in 5 hours", "expired". */
export function expiresIn(ms, now = Date.now()) {
  const left = ms - now;
  if (left <= 0) return 'expired';
  if (left >= 2 * DAY) return `expires in ${Math.floor(left / DAY)} days`;
  if (left >= 2 * 3600000) return `expires in ${Math.floor(left / 3600000)} hours`;
  return `expires in ${plural(Math.max(1, Math.floor(left / 60000)), 'minute')}`;
}

/** An estimate of a proof of work: 2^difficulty hashes at about 4 million a second. */
export function powEstimate(difficulty, rate = 4e6) {
  const hashes = 2 ** difficulty;
  const secs = hashes / rate;
  let time;
  if (secs < 1) time = 'under a second';
  else if (secs < 90) time = `about ${plural(Math.round(secs), 'second')}`;
  else if (secs < 5400) time = `about ${plural(Math.round(secs / 60), 'minute')}`;
  else time = `about ${plural(Math.round(secs / 3600), 'hour')}`;
  return { hashes, secs, time };
}

export function bytes(n) {
  if (n < 1024) return plural(n, 'byte');
  const units = ['KB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = -1;
  do {
    v /= 1024;
    i += 1;
  } while (v >= 1024 && i < units.length - 1);
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

/** Big numbers with separators: 1048576 → "1,048,576". */
export const count = (n) => new Intl.NumberFormat().format(n);
