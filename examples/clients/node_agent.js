// Node.js's http.Agent with keepAlive: 5 requests at once in each burst, 5 sockets kept free.
// A free socket whose server ends it is ended and dropped by Node at once: clean.
// Run: node node_agent.js URL
const http = require('http');
const agent = new http.Agent({ keepAlive: true });
const url = process.argv[2];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const get = () => new Promise((ok, ko) => {
  http.get(url, { agent }, (res) => { res.resume(); res.on('end', ok); }).on('error', ko);
});
(async () => {
  for (let i = 0; i < 3; i++) {
    await Promise.all([get(), get(), get(), get(), get()]);
    await sleep(600);
  }
  await sleep(1500);
  agent.destroy();
})();
