import { Lab, launchBrowser, desktopContext, openSignedIn, rawRequest, poll } from './lib/harness.js';
import { items, showRequests } from './lib/app.js';
const lab = new Lab('kith-dev-');
try {
  const A = await lab.start('a');
  const C = await lab.start('c', { bootstrap: [A.tcpAddr()] });
  await A.waitForRouting(1); await C.waitForRouting(1);
  const browser = await launchBrowser();
  const page = await openSignedIn(await desktopContext(browser), A);
  page.on('request', r => { if (r.url().includes('/v1/')) console.log('>>', r.method(), r.url()); });
  page.on('response', r => { if (r.url().includes('/v1/') && r.request().method() !== 'GET') console.log('<<', r.status(), r.url()); });
  console.log(await C.cli(['send', A.peerId, 'hi from carol', '--json']));
  await page.getByRole('button', {name: 'Skip'}).click(); const cont = page.getByRole('button', {name: /^(Continue|Done)$/}); await cont.first().waitFor({timeout: 5000}).then(() => cont.first().click()).catch(() => {});
  const req = await showRequests(page);
  const item = req.getByRole('listitem').filter({ hasText: 'hi from carol' });
  await item.first().waitFor({ timeout: 45000 });
  console.log('request shown');
  await item.first().getByRole('button', { name: /^accept/i }).click();
  console.log('clicked');
  await new Promise(r => setTimeout(r, 3000));
  const inbox = await rawRequest(A, { path: '/v1/inbox', headers: { Authorization: `Bearer ${A.token}` } });
  console.log(inbox.text);
  console.log('items in Requests:', await items(page, 'Requests', 'hi from carol').count(), 'in Chats:', await items(page, 'Chats', 'hi from carol').count());
  console.log(page.problems);
  await page.screenshot({ path: '/tmp/dev/accept.png' });
  await browser.close();
} finally { await lab.cleanup(); }
