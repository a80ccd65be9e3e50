// c-ares through Node's dns.Resolver: A and AAAA at once, from the socket
// c-ares keeps open per server. Usage: node node-resolve.js NAME [LOOKUPS
// [STAGGER_MS]]; looks NAME up LOOKUPS times whatever each gives, one after
// another, or with STAGGER_MS all at once, each started STAGGER_MS after
// the one before. Prints the last lookup's addresses, one a line, and exits
// 1 if it found none.
const { Resolver } = require('node:dns').promises;

const resolver = new Resolver();

async function lookUp(name) {
  const results = await Promise.allSettled([resolver.resolve4(name), resolver.resolve6(name)]);
  for (const r of results.filter((r) => r.status === 'rejected')) {
    console.error(`resolve ${name}: ${r.reason.code}`);
  }
  return results.flatMap((r) => (r.status === 'fulfilled' ? r.value : []));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const [name, lookups = '1', stagger] = process.argv.slice(2);
  let addresses = [];
  if (stagger === undefined) {
    for (let i = 0; i < Number(lookups); i++) {
      addresses = await lookUp(name);
    }
  } else {
    const started = [];
    for (let i = 0; i < Number(lookups); i++) {
      if (i > 0) await sleep(Number(stagger));
      started.push(lookUp(name));
    }
    addresses = (await Promise.all(started)).at(-1);
  }
  for (const address of addresses) console.log(address);
  process.exitCode = addresses.length > 0 ? 0 : 1;
}

main();
