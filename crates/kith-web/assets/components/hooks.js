// Small hooks shared by views and components.

import { useEffect, useMemo, useRef, useState } from '../vendor/preact-htm.js';

let next = 0;

/** A stable id for label/aria wiring. */
export function useId(prefix = 'k') {
  return useMemo(() => `${prefix}${++next}`, []);
}

/** The current time, refreshed every `every` ms while the component is on screen. */
export function useNow(every = 30000) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), every);
    return () => clearInterval(t);
  }, [every]);
  return now;
}

/** Whether the component is still mounted (for answers that arrive after it left). */
export function useMounted() {
  const mounted = useRef(true);
  useEffect(
    () => () => {
      mounted.current = false;
    },
    [],
  );
  return mounted;
}

/** Calls `fn` now and every `every` ms while mounted (bounded: stops on unmount). */
export function usePoll(fn, every, deps = []) {
  const saved = useRef(fn);
  saved.current = fn;
  useEffect(() => {
    saved.current();
    const t = setInterval(() => saved.current(), every);
    return () => clearInterval(t);
  }, deps);
}

/** Navigates to a hash route. */
export function go(hash, replace = false) {
  if (replace) location.replace(hash);
  else location.hash = hash;
}
