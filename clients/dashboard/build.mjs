// Builds the dashboard into dist/: index.html, app.js (one bundle, @runcast/client inlined), app.css.
// No CDN, no runtime fetches besides the Runcast API and gateway. Run from clients/js (esbuild
// is its dev dependency): `npm run build:dashboard`, or `make dashboard` from the repository root.
import { createRequire } from "node:module";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
// esbuild is a dev dependency of clients/js (one package-lock for the JS side).
const { build } = createRequire(join(here, "../js/package.json"))("esbuild");
const out = join(here, "dist");
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(here, "src/main.ts")],
  bundle: true,
  format: "esm",
  target: ["es2022"],
  minify: true,
  sourcemap: true,
  outfile: join(out, "app.js"),
  logLevel: "warning",
});
copyFileSync(join(here, "src/index.html"), join(out, "index.html"));
copyFileSync(join(here, "src/app.css"), join(out, "app.css"));
console.log(`dashboard built into ${out}`);
