#!/usr/bin/env bash
# Build the Greengrass v2 component: a wheel, the pinned constraints, and a recipe pointing at both in S3.
#   packaging/greengrass/build.sh s3://my-bucket/components
# then upload the wheel and create the component version with the commands it prints.
set -euo pipefail
cd "$(dirname "$0")/../.."
bucket=${1:?usage: build.sh s3://bucket/prefix}
out=build/greengrass
rm -rf "$out" && mkdir -p "$out"
python3 -m pip wheel --quiet --no-deps --wheel-dir "$out" .
wheel=$(basename "$(ls "$out"/twilio_connector-*.whl)")
version=$(echo "$wheel" | cut -d- -f2)
cp constraints.txt "$out/constraints.txt"  # the install pins what CI tested
sed -e "s|{{VERSION}}|$version|" -e "s|{{WHEEL}}|$wheel|" -e "s|{{ARTIFACT_URI}}|$bucket/$wheel|" \
    -e "s|{{CONSTRAINTS_URI}}|$bucket/constraints.txt|" packaging/greengrass/recipe.yaml > "$out/recipe.yaml"
cat <<MSG
Built $out/$wheel and $out/recipe.yaml. Next:
  aws s3 cp $out/$wheel $bucket/$wheel
  aws s3 cp $out/constraints.txt $bucket/constraints.txt
  aws greengrassv2 create-component-version --inline-recipe fileb://$out/recipe.yaml
MSG
