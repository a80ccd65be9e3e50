// c-ares through Node's dns.Resolver: A and AAAA at once, from the socket
// c-ares keeps open per server. Usage: node node-resolve.js NAME [LOOKUPS];
// looks NAME up LOOKUPS times whatever each gives, prints the last lookup's
// addresses, one a line, and exits 1 if it found none.
const { Resolver } = require('node:dns').promises;

async function main() {
  const [name, lookups = '1'] = process.argv.slice(2);
  const resolver = new Resolver();
  let addresses = [];
  for (let i = 0; i < Number(lookups); i++) {
    const results = await Promise.allSettled([resolver.resolve4(name), resolver.resolve6(name)]);
    addresses = results.flatMap((r) => (r.status === 'fulfilled' ? r.value : []));
    for (const r of results.filter((r) => r.status === 'rejected')) {
      console.error(`resolve ${name}: ${r.reason.code}`);
    }
  }
  for (const address of addresses) console.log(address);
  process.exitCode = addresses.length > 0 ? 0 : 1;
}

main();
