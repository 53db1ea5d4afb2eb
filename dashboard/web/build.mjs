// Builds the fleet page into dist/: one bundled, minified app.js (the page's
// modules and the NATS packages from node_modules) beside index.html and
// style.css. Run by scripts/dashboard.sh; nodectl embeds dist/ when built.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";

rmSync("dist", { recursive: true, force: true });
mkdirSync("dist");
await build({
  entryPoints: ["src/main.js"],
  bundle: true,
  minify: true,
  format: "esm",
  target: ["chrome110", "firefox110", "safari16"],
  outfile: "dist/app.js",
  legalComments: "linked",
  logLevel: "warning",
});
for (const file of ["index.html", "style.css"]) copyFileSync(`src/${file}`, `dist/${file}`);
