// Bundle the widget sources into ../wsi_lab/static/ (committed, so a checkout works without npm).
import { build } from "esbuild";
import { copyFileSync } from "node:fs";

for (const name of ["viewer", "scatter"]) {
  await build({
    entryPoints: [`src/${name}.ts`],
    bundle: true,
    format: "esm",
    minify: true,
    target: "es2020",
    outfile: `../wsi_lab/static/${name}.js`,
    legalComments: "eof",
    logLevel: "info",
  });
}
copyFileSync("src/viewer.css", "../wsi_lab/static/viewer.css");
// the slide browser's channel picker: the viewer's display panel on its own
await build({
  entryPoints: ["src/picker.ts"],
  bundle: true,
  format: "esm",
  minify: true,
  target: "es2020",
  outfile: "../wsi_lab/static/picker.js",
  legalComments: "eof",
  logLevel: "info",
});
copyFileSync("src/picker.css", "../wsi_lab/static/picker.css");
